"""What every tab may need besides the state: the machine's hardware and the app's folders.

Built once when the app starts (`AppContext.create`), handed to the tabs as `reg.ctx`. Hardware
detection asks `grpo_box.hardware.detect_gpu` only where an NVIDIA driver is present at all: that
call imports torch, which costs seconds of start-up on a machine that cannot have a CUDA GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from grpo_box.hardware import GpuInfo, detect_gpu, ram_gb
from grpo_box.presets import propose_preset


@dataclass
class Hardware:
    gpu: GpuInfo | None
    driver: str | None = None
    cuda: str | None = None
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    ram_gb: float | None = None

    @property
    def proposed_preset(self) -> str:
        return propose_preset(self.gpu)


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def _smi_versions() -> tuple[str | None, str | None]:
    """(driver version, CUDA version the driver supports) from `nvidia-smi`'s header."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        text = subprocess.run([exe], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)


def detect_hardware() -> Hardware:
    gpu = detect_gpu() if _nvidia_driver_present() else None
    driver, cuda = _smi_versions() if gpu is not None else (None, None)
    return Hardware(gpu, driver, cuda, ram_gb=ram_gb())


@dataclass
class AppContext:
    hardware: Hardware
    runs_dir: str | None  # None: the engine's default (<data home>/runs)
    files_dir: Path  # uploaded data files and saved reward files go under here

    @classmethod
    def create(cls, runs_dir: str | None = None, files_dir: str | Path | None = None,
               hardware: Hardware | None = None) -> "AppContext":
        from grpo_box.models import data_home

        runs = str(Path(runs_dir).expanduser().resolve()) if runs_dir else None
        return cls(hardware or detect_hardware(), runs, Path(files_dir).expanduser() if files_dir else data_home())

    @property
    def uploads_dir(self) -> Path:
        return self.files_dir / "uploads"

    @property
    def rewards_dir(self) -> Path:
        return self.files_dir / "rewards"
