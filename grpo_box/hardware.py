"""GPU detection and VRAM readers.

Setup starts by finding the card: torch.cuda when a CUDA build of torch sees one, else
`nvidia-smi` when it is on PATH (a CPU build of torch on a GPU machine still gets the right
preset), else no GPU. `presets.propose_preset` maps the card to the largest preset it holds.

The GPU stack GRPO Box pins (vLLM 0.31, torch 2.13 cu130) is CUDA 13 only: it needs a Linux
driver >= 580 and compute capability >= 7.5 (Turing and newer). `gpu_problem` says why a card
cannot run it (a Pascal card, an old driver, a CPU build of torch); such a card gets the cpu
preset, and `modeling.check_gpu_usable` refuses a GPU config on it instead of running it on
the CPU unnoticed.

During training the readers below are sampled every step into metrics.jsonl: torch's counters see
only the trainer's own allocator; `torch.cuda.mem_get_info` (cudaMemGetInfo) sees the whole card,
vLLM's KV cache included, which Unsloth's standby mode allocates outside torch's caching allocator.
torch's peak is reset after each reading (`reset_peak_vram`), so every step's peak is that step's
own. A process without a CUDA context of its own (the app, the CLI before training) asks NVML
(pynvml, else nvidia-smi) instead, so that it does not create one (a few hundred MB). NVML numbers
GPUs in PCI order while CUDA puts the fastest first, so NVML is asked for the card by the UUID torch
gives for CUDA's device 0; only without a CUDA torch does it fall back to CUDA_VISIBLE_DEVICES'
first entry (an index or a UUID). Every reader returns None on a machine without a GPU. Sizes are in
GB meaning GiB (2**30 bytes), as torch and nvidia-smi report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

GIB = 1024**3
MIN_CAPABILITY = (7, 5)  # torch cu130 / vLLM 0.31: Turing and newer
MIN_DRIVER = 580  # CUDA 13's Linux driver
_SMI_QUERY = ["--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader"]
_SMI_QUERY_OLD = ["--query-gpu=name,memory.total", "--format=csv,noheader"]  # drivers without compute_cap
_UNIT_TO_GIB = {"mib": 1 / 1024, "gib": 1.0, "mb": 1e6 / GIB, "gb": 1e9 / GIB, "kib": 1 / 1024**2}

Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class GpuInfo:
    name: str
    vram_gb: float
    capability: tuple[int, int] | None = None  # compute capability (major, minor), when known
    driver: str | None = None  # the NVIDIA driver's version (nvidia-smi); None when torch answered
    uuid: str | None = None  # "GPU-…": this very card for NVML / nvidia-smi (from torch)


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """GPUs in `nvidia-smi --query-gpu=name,memory.total[,compute_cap,driver_version] --format=csv,noheader`."""
    gpus = []
    for line in text.strip().splitlines():
        head, capability, driver = line, None, None
        parts = line.rsplit(",", 3)
        if len(parts) == 4 and re.fullmatch(r"\s*\d+\.\d+\s*", parts[2]) and re.fullmatch(r"\s*[\d.]+\s*", parts[3]):
            head = ",".join(parts[:2])
            major, minor = parts[2].strip().split(".")
            capability, driver = (int(major), int(minor)), parts[3].strip()
        name, sep, memory = head.rpartition(",")
        size = _parse_size_gb(memory) if sep else None
        if name.strip() and size is not None:
            gpus.append(GpuInfo(name.strip(), size, capability, driver))
    return gpus


def gpu_problem(gpu: GpuInfo | None) -> str | None:
    """Why GRPO Box's GPU stack cannot use this card (None: it can, or nothing is known against it)."""
    if gpu is None:
        return None
    if gpu.capability is not None and gpu.capability < MIN_CAPABILITY:
        return (f"{gpu.name} has compute capability {gpu.capability[0]}.{gpu.capability[1]}; the GPU stack "
                f"(torch 2.13 cu130, vLLM 0.31) needs {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Turing: "
                "RTX 20xx, T4, and later); use the cpu preset on this machine")
    major = _driver_major(gpu.driver)
    if major is not None and major < MIN_DRIVER:
        return (f"the NVIDIA driver is {gpu.driver}; the GPU stack is built for CUDA 13, which needs driver "
                f"{MIN_DRIVER} or newer: update the driver (or use the cpu preset)")
    return None


def _driver_major(driver: str | None) -> int | None:
    match = re.match(r"\s*(\d+)", driver or "")
    return int(match.group(1)) if match else None


def torch_problem() -> str | None:
    """Why torch cannot use the NVIDIA card nvidia-smi sees (None: it can, or there is no card)."""
    if _torch_cuda() is not None:
        return None
    gpu = _smi_gpu()
    if gpu is None:
        return None
    reason = gpu_problem(gpu)
    if reason:
        return reason
    try:
        import torch
    except ImportError:
        return "torch is not installed: run ./install.sh"
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU build although {gpu.name} is present: run ./install.sh "
                "again (it replaces a CPU torch left from a CPU install)")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use {gpu.name} (torch.cuda.is_available() "
            "is False): check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES")


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


def ram_gb() -> float | None:
    """This machine's physical RAM in GiB (None where the OS does not say)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        return None


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


def has_cuda() -> bool:
    """Whether torch can use a CUDA device: the engine's one probe (training, chat, evaluation and
    the loaders ask it). A CPU build, no driver or a broken driver all answer False."""
    return _torch_cuda() is not None


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
        major, minor = getattr(props, "major", None), getattr(props, "minor", None)
        uuid = getattr(props, "uuid", None)
        return GpuInfo(props.name, round(props.total_memory / GIB, 2),
                       (major, minor) if isinstance(major, int) and isinstance(minor, int) else None,
                       uuid=_nvml_uuid(uuid))
    return _smi_gpu(runner)


def _smi_gpu(runner: Runner | None = None) -> GpuInfo | None:
    """CUDA_VISIBLE_DEVICES' first card as nvidia-smi lists it (a best guess without a CUDA torch)."""
    device = visible_device()
    if device is None:
        return None
    run = runner or _run_nvidia_smi
    try:
        try:
            gpus = parse_nvidia_smi(run(_SMI_QUERY))
        except subprocess.CalledProcessError:  # a driver older than the compute_cap field
            gpus = parse_nvidia_smi(run(_SMI_QUERY_OLD))
    except (OSError, subprocess.SubprocessError):
        return None
    index = int(device) if device.isdigit() else 0  # a UUID: nvidia-smi's list order cannot place it
    return gpus[index] if index < len(gpus) else None


def _nvml_uuid(uuid: object) -> str | None:
    """torch's device UUID as NVML / nvidia-smi spell it ("GPU-" + the UUID)."""
    if not uuid:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


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


def nvml_device() -> str | None:
    """The NVML / nvidia-smi id of CUDA's device 0: its UUID from torch when torch sees CUDA (NVML's
    index order is PCI order, CUDA's is fastest first), else `visible_device`'s guess."""
    cuda = _torch_cuda()
    if cuda is not None:
        try:
            uuid = _nvml_uuid(getattr(cuda.get_device_properties(0), "uuid", None))
        except Exception:  # a driver problem: fall back to the index
            uuid = None
        if uuid:
            return uuid
    return visible_device()


def cuda_mem_info() -> dict[str, float] | None:
    """Whole-card free/total GB from `torch.cuda.mem_get_info()` (cudaMemGetInfo: every process and
    vLLM's cuMem pool counted); None without CUDA. Creates a CUDA context where there is none yet, so
    the readers use it only in a process that already holds one (`_has_cuda_context`)."""
    cuda = _torch_cuda()
    if cuda is None or not hasattr(cuda, "mem_get_info"):
        return None
    try:
        free, total = cuda.mem_get_info()
    except Exception:  # a driver error mid-run: let NVML answer
        return None
    return {"free": round(free / GIB, 3), "total": round(total / GIB, 3)}


def _has_cuda_context(cuda) -> bool:
    """Whether this process already allocated on the GPU (then mem_get_info costs nothing extra)."""
    try:
        return bool(cuda.is_initialized()) and cuda.memory_reserved() > 0
    except Exception:
        return False


def free_vram_gb(gpu: GpuInfo | None = None) -> float | None:
    """GB free on CUDA's device 0 now (what Unsloth sizes vLLM's share from), without creating a CUDA
    context in this process: mem_get_info where one exists, else NVML; None when unknown."""
    cuda = _torch_cuda()
    if cuda is not None and _has_cuda_context(cuda):
        info = cuda_mem_info()
        if info is not None:
            return info["free"]
    device = gpu.uuid if gpu is not None and gpu.uuid else nvml_device()
    reading = nvml_vram_gb(device) if device is not None else None
    if reading is None:
        return None
    return round(max(reading["total"] - reading["used"], 0.0), 2)


def nvml_vram_gb(device: str | None = None, runner: Runner | None = None) -> dict[str, float] | None:
    """Whole-card used/total GB from NVML (pynvml, else nvidia-smi) for `device` (an NVML index or
    UUID; default: CUDA's device 0, see `nvml_device`); None without a GPU."""
    device = device if device is not None else nvml_device()
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


def card_vram_gb() -> dict[str, float] | None:
    """Whole-card used/total GB (vLLM's memory included): mem_get_info in a process that holds a CUDA
    context, else NVML; None without a GPU."""
    cuda = _torch_cuda()
    if cuda is not None and _has_cuda_context(cuda):
        info = cuda_mem_info()
        if info is not None:
            return {"used": round(info["total"] - info["free"], 3), "total": info["total"]}
    return nvml_vram_gb()


def current_vram_gb() -> float | None:
    """GB in use on the card now: the whole card (counts vLLM) when known, else torch's allocated."""
    card = card_vram_gb()
    if card is not None:
        return card["used"]
    torch_reading = torch_vram_gb()
    return torch_reading["allocated"] if torch_reading else None


def peak_vram_gb() -> float | None:
    """Peak GB reserved by torch's allocator since the last `reset_peak_vram` (or the start)."""
    torch_reading = torch_vram_gb()
    return torch_reading["peak_reserved"] if torch_reading else None


def vram_snapshot() -> dict[str, float] | None:
    """Flat per-step VRAM fields for metrics.jsonl (`vram/...` keys); None on a CPU machine."""
    torch_reading = torch_vram_gb()
    card = card_vram_gb()
    if torch_reading is None and card is None:
        return None
    out = {f"vram/{key}_gb": value for key, value in (torch_reading or {}).items()}
    if card is not None:
        out["vram/used_gb"] = card["used"]
        out["vram/total_gb"] = card["total"]
    return out
