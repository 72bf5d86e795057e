"""Optional upload of an adapter, a merged model or a GGUF file to the Hugging Face Hub.

The user's token goes only to `HfApi(token=…)`: it is never logged, never written to a run file,
and is scrubbed from error messages before they are raised.

Nothing local leaks either: the merge report (`grpo_box_merge.json`, full of this machine's paths)
stays behind, and text files that name local absolute paths (PEFT writes the base model's folder
into `adapter_config.json` and the adapter's README) are uploaded with each such path cut to its
last component.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .export_report import ExportError
from .merge import MERGE_INFO
from .progress import Progress

IGNORED = (".*", "*.partial", MERGE_INFO)
_TEXT_SUFFIXES = {".json", ".md", ".txt", ".jinja", ".yaml", ".yml"}
_TEXT_MAX_BYTES = 4 * 2**20
# Two parts at least: a single "/word" is common tokenizer vocabulary, not a path to hide.
_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+@-]+/)+[\w.+@-]+")


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
            _upload_folder(api, path, repo_id)
        else:
            api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id)
    except Exception as exc:
        message = str(exc).replace(token, "***") if token else str(exc)
        raise ExportError(f"pushing {path.name} to {repo_id} failed: {message}") from None
    say("uploaded", 1.0)
    return f"https://huggingface.co/{repo_id}"


def _upload_folder(api: Any, folder: Path, repo_id: str) -> None:
    scrubbed = scrub_local_paths(folder)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, ignore_patterns=[*IGNORED, *scrubbed])
    for name, data in scrubbed.items():
        api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id=repo_id)


def scrub_local_paths(folder: Path) -> dict[str, bytes]:
    """{relative name: new content} for the text files in `folder` that name an existing local
    absolute path, with each such path replaced by its last component."""
    out: dict[str, bytes] = {}
    for file in sorted(folder.rglob("*")):
        name = file.relative_to(folder).as_posix()
        if not _uploadable_text(file, name):
            continue
        text = file.read_text(errors="replace")
        new = _ABS_PATH.sub(lambda m: Path(m.group()).name if Path(m.group()).exists() else m.group(), text)
        if new != text:
            out[name] = new.encode()
    return out


def _uploadable_text(file: Path, name: str) -> bool:
    hidden_or_ignored = any(part.startswith(".") for part in name.split("/")) or name.endswith(".partial")
    return (file.is_file() and not hidden_or_ignored and name != MERGE_INFO and file.suffix in _TEXT_SUFFIXES
            and file.stat().st_size <= _TEXT_MAX_BYTES)
