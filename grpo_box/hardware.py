"""GPU detection, preset proposal and VRAM readers.

Setup starts by finding the card: torch.cuda when a CUDA build of torch sees one, else
`nvidia-smi` when it is on PATH (a CPU build of torch on a GPU machine still gets the right
preset), else no GPU. `propose_preset` maps the card to the largest preset it holds. During
training the readers below are sampled every step into metrics.jsonl: torch's counters see only
the trainer's own allocator, while NVML (pynvml or nvidia-smi) also sees vLLM's KV cache, which
Unsloth's standby mode allocates outside torch's caching allocator. torch's peak is reset after
each reading (`reset_peak_vram`), so every step's peak is that step's own. NVML numbers GPUs
differently from CUDA when CUDA_VISIBLE_DEVICES is set, so NVML and nvidia-smi are asked about
its first entry (an index or a UUID), the card CUDA calls device 0. Every reader returns None on
a machine without a GPU. Sizes are in GB meaning GiB (2**30 bytes), as torch and nvidia-smi report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

GIB = 1024**3
PRESET_TOLERANCE = 0.05  # cards report a little less than their label (an 8 GB card shows ~7.8)
_SMI_QUERY = ["--query-gpu=name,memory.total", "--format=csv,noheader"]
_UNIT_TO_GIB = {"mib": 1 / 1024, "gib": 1.0, "mb": 1e6 / GIB, "gb": 1e9 / GIB, "kib": 1 / 1024**2}

Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class GpuInfo:
    name: str
    vram_gb: float


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """GPUs in `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader` output."""
    gpus = []
    for line in text.strip().splitlines():
        name, sep, memory = line.rpartition(",")
        size = _parse_size_gb(memory) if sep else None
        if name.strip() and size is not None:
            gpus.append(GpuInfo(name.strip(), size))
    return gpus


def _parse_size_gb(text: str, default_unit: str = "mib") -> float | None:
    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", text)
    if not match:
        return None  # "[N/A]", "[Not Supported]"
    unit = (match.group(2) or default_unit).lower()
    factor = _UNIT_TO_GIB.get(unit)
    return round(float(match.group(1)) * factor, 2) if factor else None


def _run_nvidia_smi(args: list[str]) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=10, check=True).stdout


def _torch_cuda():
    """torch.cuda when a CUDA device is usable, else None (CPU builds, no driver)."""
    try:
        import torch
    except ImportError:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except Exception:  # a broken driver raises here; treat it as no GPU
        return None


def visible_device() -> str | None:
    """The NVML/nvidia-smi id of CUDA's device 0: CUDA_VISIBLE_DEVICES' first entry, else "0";
    None when that variable hides every GPU ("" or "-1")."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return "0"
    first = value.split(",")[0].strip()
    return None if first in ("", "-1") else first


def detect_gpu(runner: Runner | None = None) -> GpuInfo | None:
    """The GPU CUDA uses by default (device 0 of the visible ones), or None when there is none."""
    cuda = _torch_cuda()
    if cuda is not None:
        props = cuda.get_device_properties(0)
        return GpuInfo(props.name, round(props.total_memory / GIB, 2))
    device = visible_device()
    if device is None:
        return None
    try:
        gpus = parse_nvidia_smi((runner or _run_nvidia_smi)(_SMI_QUERY))
    except (OSError, subprocess.SubprocessError):
        return None
    index = int(device) if device.isdigit() else 0  # a UUID: nvidia-smi's list order cannot place it
    return gpus[index] if index < len(gpus) else None


def _preset_cards() -> list[tuple[str, float]]:
    from .presets import list_presets

    return [(p.name, p.vram_gb) for p in list_presets() if p.vram_gb > 0]


def propose_preset(gpu: GpuInfo | None) -> str:
    """The largest GPU preset the card holds (within PRESET_TOLERANCE of its label), else "cpu".

    A card smaller than the smallest preset (say a 6 GB laptop GPU) also gets "cpu": no GPU preset
    fits it as shipped; the memory estimate's suggestions can shrink one by hand.
    """
    if gpu is None:
        return "cpu"
    best, best_vram = "cpu", 0.0
    for name, vram in _preset_cards():
        if gpu.vram_gb >= vram * (1 - PRESET_TOLERANCE) and vram > best_vram:
            best, best_vram = name, vram
    return best


def torch_vram_gb() -> dict[str, float] | None:
    """The trainer's own allocator: allocated, reserved and peak reserved GB since the last
    `reset_peak_vram` (None without CUDA)."""
    cuda = _torch_cuda()
    if cuda is None:
        return None
    return {
        "allocated": round(cuda.memory_allocated() / GIB, 3),
        "reserved": round(cuda.memory_reserved() / GIB, 3),
        "peak_reserved": round(cuda.max_memory_reserved() / GIB, 3),
    }


def reset_peak_vram() -> None:
    """Start a new peak window for torch's counters (a no-op without CUDA)."""
    cuda = _torch_cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()


def nvml_vram_gb(device: str | None = None, runner: Runner | None = None) -> dict[str, float] | None:
    """Whole-card used/total GB from NVML (pynvml, else nvidia-smi) for `device` (an NVML index or
    UUID; default: CUDA's device 0, see `visible_device`); None without a GPU."""
    device = device if device is not None else visible_device()
    if device is None:
        return None
    reading = _pynvml_reading(device)
    if reading is not None:
        return reading
    try:
        text = (runner or _run_nvidia_smi)(
            [f"--id={device}", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_memory_used(text)


def parse_memory_used(text: str) -> dict[str, float] | None:
    """`memory.used,memory.total` in MiB (nounits) → {"used": GB, "total": GB}."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    parts = [_parse_size_gb(p) for p in line.split(",")]
    if len(parts) != 2 or None in parts:
        return None
    return {"used": parts[0], "total": parts[1]}


def _pynvml_reading(device: str) -> dict[str, float] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if device.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(device.encode())
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"used": round(info.used / GIB, 3), "total": round(info.total / GIB, 3)}
    except Exception:  # pynvml.NVMLError without a driver
        return None


def current_vram_gb() -> float | None:
    """GB in use on the card now: NVML (counts vLLM) when it answers, else torch's allocated."""
    nvml = nvml_vram_gb()
    if nvml is not None:
        return nvml["used"]
    torch_reading = torch_vram_gb()
    return torch_reading["allocated"] if torch_reading else None


def peak_vram_gb() -> float | None:
    """Peak GB reserved by torch's allocator since the last `reset_peak_vram` (or the start)."""
    torch_reading = torch_vram_gb()
    return torch_reading["peak_reserved"] if torch_reading else None


def vram_snapshot() -> dict[str, float] | None:
    """Flat per-step VRAM fields for metrics.jsonl (`vram/...` keys); None on a CPU machine."""
    torch_reading = torch_vram_gb()
    nvml = nvml_vram_gb()
    if torch_reading is None and nvml is None:
        return None
    out = {f"vram/{key}_gb": value for key, value in (torch_reading or {}).items()}
    if nvml is not None:
        out["vram/used_gb"] = nvml["used"]
        out["vram/total_gb"] = nvml["total"]
    return out
