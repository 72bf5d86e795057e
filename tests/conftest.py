"""Shared fixtures: the bundled offline model (imported once per machine by install.sh or on first use)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The one-training-job-per-machine lock of this test session (not the user's, see locks.py)
os.environ.setdefault("GRPO_BOX_LOCK_DIR", tempfile.mkdtemp(prefix="grpo-box-test-lock-"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU with CUDA; skipped elsewhere")
    config.addinivalue_line("markers", "slow: trains or converts a real model (minutes on CPU)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no NVIDIA GPU here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    from grpo_box.models import ensure_bundled_model

    return ensure_bundled_model()


@pytest.fixture(scope="session")
def bundled_tokenizer(bundled_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_dir))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Decoding a 135M model is overhead-bound: on a shared 2-core machine one torch thread is
    several times faster than two fighting over the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
