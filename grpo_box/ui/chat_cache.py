"""The Chat tab's one loaded model, shared by every page, behind a lock.

Chat is the only place where the app process loads a model. Gradio runs handlers on worker
threads, so two pages may chat at once: each reply holds `turn()` for as long as it generates,
which serialises generation (one model, one reply at a time, so a PEFT adapter switched off for
a "base" reply never leaks into another page's "trained" reply) and lets a page say it is waiting.

Where the model runs (`placement`): without a GPU everything runs on the CPU; with a GPU the model
goes there unless a training job is running, in which case the chat either waits for the job to
end or loads the model on the CPU, as the user chose. A GGUF runs in llama.cpp, offloaded to the
GPU only where llama-cpp-python was built for it and no job trains (else on the CPU: llama.cpp
is quick enough there, so it never waits). The Chat tab decides it while holding `turn()`: a
reply queued behind another page's sees a training job that started meanwhile, instead of loading
on the GPU it now needs.

The cached model is keyed by its files' identity too (inode and mtime): a GGUF exported again or
an adapter trained further under the same path is loaded afresh, not answered from the old one.

`release()` drops the model and frees its memory; the Train tab calls it before starting a job
(if a reply is streaming, it is told to stop and `release()` waits for it).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_box.chat import ChatSource
from grpo_box.hardware import has_cuda
from grpo_box.inference import BaseGenerator, from_gguf, is_gguf, load_for_generation
from grpo_box.llama_tools import gpu_layers
from grpo_box.runs import ADAPTER_FILES

_LOCK = threading.Lock()
_STOP = threading.Event()  # set by release(): a streaming reply stops at its next token
_loaded: dict[str, Any] = {"key": None, "generator": None}
RELEASE_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class Placement:
    device: str  # "gpu" or "cpu"
    note: str  # what the page says about it
    wait: bool = False  # True: a training job holds the GPU and the user chose to wait for it


def placement(src: ChatSource, has_gpu: bool, training: str | None, when_training: str) -> Placement:
    """Where a chat with `src` runs now; `training` names the run a job is training, if any."""
    if is_gguf(src.model):
        return _gguf_placement(has_gpu, training)
    if not has_gpu:
        shared = f" A training job ({training}) shares the CPU, so replies are slower." if training else ""
        return Placement("cpu", "Running on the CPU (no GPU here)." + shared)
    if not training:
        return Placement("gpu", "Running on the GPU.")
    if when_training == "cpu":
        return Placement("cpu", f"Training ({training}) holds the GPU: this chat runs on the CPU instead "
                                "(slower), so training is not disturbed.")
    return Placement("gpu", f"Training ({training}) holds the GPU: this chat waits for it to finish "
                            "(or choose 'run on the CPU').", wait=True)


def _gguf_placement(has_gpu: bool, training: str | None) -> Placement:
    said = ": the replies Ollama and llama.cpp will give."
    if not has_gpu or gpu_layers() == 0:
        return Placement("cpu", f"GGUF in llama.cpp on the CPU{said}")
    if training:
        return Placement("cpu", f"GGUF in llama.cpp on the CPU, since training ({training}) holds the GPU{said}")
    return Placement("gpu", f"GGUF in llama.cpp on the GPU{said}")


@contextlib.contextmanager
def turn(timeout: float | None = None) -> Iterator[bool]:
    """Hold the model for one reply; yields False (holding nothing) when `timeout` ran out first."""
    got = _LOCK.acquire(timeout=-1 if timeout is None else timeout)
    try:
        yield got
    finally:
        if got:
            _LOCK.release()


def busy() -> bool:
    """Whether another reply holds the model right now."""
    return _LOCK.locked()


def generator(src: ChatSource, device: str, has_gpu: bool = False) -> BaseGenerator:
    """The generator for `src` on `device`, loading it (and dropping the previous one) if needed.

    Call inside `turn()`. A run's adapter is always loaded with it; a "base" reply switches it off
    (`adapter_disabled`), so base, trained and compare share one load.
    """
    key = _key(src, device)
    if _loaded["key"] != key:
        _drop()
        _loaded["generator"] = _load(src, device, has_gpu)
        _loaded["key"] = key
    return _loaded["generator"]


def is_loaded(src: ChatSource, device: str) -> bool:
    """Whether the next reply for `src` on `device` is answered without loading."""
    return _loaded["key"] == _key(src, device)


def _key(src: ChatSource, device: str) -> tuple[Any, ...]:
    files = [src.model] if is_gguf(src.model) else [Path(src.adapter) / name for name in ADAPTER_FILES
                                                     if src.adapter]
    return src.model, src.adapter, device, tuple(_identity(path) for path in files)


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _load(src: ChatSource, device: str, has_gpu: bool) -> BaseGenerator:
    if is_gguf(src.model):  # n_gpu_layers=0 keeps the card free where placement chose the CPU
        return from_gguf(src.model, n_gpu_layers=None if device == "gpu" else 0)
    model_config = src.config.model if src.config else None
    if device == "cpu" and has_gpu:
        from grpo_box.inference import _load_cpu  # transformers + PEFT on the CPU even where CUDA exists
        from grpo_box.models import resolve_model

        return _load_cpu(resolve_model(src.model), src.adapter)
    return load_for_generation(src.model, src.adapter, model_config=model_config)


def stop_requested() -> bool:
    return _STOP.is_set()


def drop_gpu_model() -> bool:
    """Inside `turn()`: drop a model cached on the GPU (a training job needs the VRAM, whoever started
    it: this app, another one, the CLI); whether one was dropped."""
    key = _loaded["key"]
    if key is None or key[2] != "gpu":
        return False
    _drop()
    return True


def drop_idle_gpu_model() -> bool:
    """Outside a reply: drop a model cached on the GPU unless a reply holds it right now (a training
    job started, and an idle chat must not keep VRAM it needs); whether one was dropped."""
    if not _LOCK.acquire(blocking=False):
        return False  # a reply is streaming: the next one sees the job in `placement`
    try:
        return drop_gpu_model()
    finally:
        _LOCK.release()


def release() -> None:
    """Drop the cached model and free its memory (before training starts); waits for a reply in progress."""
    _STOP.set()
    try:
        if not _LOCK.acquire(timeout=RELEASE_WAIT_SECONDS):
            return  # a reply ignored the stop for minutes: dropping its model under it would crash it
        try:
            _drop()
        finally:
            _LOCK.release()
    finally:
        _STOP.clear()


def loaded_key() -> tuple[Any, ...] | None:
    """(model, adapter, device, file identity) of the cached model; None when none is loaded."""
    return _loaded["key"]


def _drop() -> None:
    gen = _loaded["generator"]
    _loaded["key"], _loaded["generator"] = None, None
    if gen is None:
        return
    gen.close()
    del gen
    gc.collect()
    if "torch" in sys.modules and has_cuda():  # (a model was loaded, so torch is imported already)
        sys.modules["torch"].cuda.empty_cache()
