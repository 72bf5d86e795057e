"""Optional upload of an adapter, a merged model or a GGUF file to the Hugging Face Hub.

The user's token goes only to `HfApi(token=…)`: it is never logged, never written to a run file,
and is scrubbed from error messages before they are raised.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .export_report import ExportError

Progress = Callable[[str, float], None]


def push_to_hub(path: str | Path, repo_id: str, token: str, private: bool = True,
                progress: Progress | None = None) -> str:
    """Upload a GGUF file or a folder (e.g. export/merged) to a Hub model repo; returns its URL.

    The token goes only to `HfApi(token=…)`: it is never logged, never written to disk, and is
    scrubbed from error messages.
    """
    from huggingface_hub import HfApi

    path = Path(path)
    say = progress or (lambda msg, frac: None)
    api = HfApi(token=token)
    try:
        say(f"creating {repo_id}", 0.05)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        say(f"uploading {path.name}", 0.1)
        if path.is_dir():
            api.upload_folder(folder_path=str(path), repo_id=repo_id, ignore_patterns=[".*", "*.partial"])
        else:
            api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id)
    except Exception as exc:
        message = str(exc).replace(token, "***") if token else str(exc)
        raise ExportError(f"pushing {path.name} to {repo_id} failed: {message}") from None
    say("uploaded", 1.0)
    return f"https://huggingface.co/{repo_id}"
