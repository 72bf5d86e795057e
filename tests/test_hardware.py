"""Tests of GPU detection, preset proposal and the VRAM readers (and their per-step lines in
metrics.jsonl), with torch.cuda, NVML and nvidia-smi replaced by fakes so they run the same on CPU
machines and GPU machines."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from grpo_box import hardware
from grpo_box.hardware import GpuInfo, parse_memory_used, parse_nvidia_smi
from grpo_box.presets import propose_preset

GIB = 1024**3


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no CUDA device, pynvml is absent, and nvidia-smi is not on PATH."""
    monkeypatch.setattr(hardware, "_torch_cuda", lambda: None)
    monkeypatch.setattr(hardware, "_pynvml_reading", lambda index: None)

    def missing(args):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(hardware, "_run_nvidia_smi", missing)


def fake_cuda(total_gb: float = 23.99, allocated_gb: float = 3.0, reserved_gb: float = 4.0, peak_gb: float = 6.5):
    """torch.cuda's counters; `resets` counts reset_peak_memory_stats calls."""
    props = SimpleNamespace(name="NVIDIA GeForce RTX 4090", total_memory=int(total_gb * GIB))
    fake = SimpleNamespace(
        get_device_properties=lambda index: props,
        memory_allocated=lambda: int(allocated_gb * GIB),
        memory_reserved=lambda: int(reserved_gb * GIB),
        max_memory_reserved=lambda: int(peak_gb * GIB),
        resets=0,
    )

    def reset_peak_memory_stats():
        fake.resets += 1

    fake.reset_peak_memory_stats = reset_peak_memory_stats
    return fake


@pytest.mark.parametrize("text,expected", [
    ("NVIDIA GeForce RTX 3060, 12288 MiB\n", [GpuInfo("NVIDIA GeForce RTX 3060", 12.0)]),
    ("NVIDIA GeForce RTX 3070, 8192 MiB", [GpuInfo("NVIDIA GeForce RTX 3070", 8.0)]),
    ("Tesla T4, 15360 MiB", [GpuInfo("Tesla T4", 15.0)]),
    ("NVIDIA H100 80GB HBM3, 81559 MiB\nNVIDIA H100 80GB HBM3, 81559 MiB\n",
     [GpuInfo("NVIDIA H100 80GB HBM3", 79.65), GpuInfo("NVIDIA H100 80GB HBM3", 79.65)]),
    ("NVIDIA GeForce RTX 4090, 24564", [GpuInfo("NVIDIA GeForce RTX 4090", 23.99)]),  # nounits: MiB
    ("NVIDIA Jetson, [N/A]\n", []),
    ("", []),
    ("garbage without a comma", []),
])
def test_parse_nvidia_smi(text, expected):
    assert parse_nvidia_smi(text) == expected


def test_parse_memory_used():
    assert parse_memory_used("2048, 8192\n") == {"used": 2.0, "total": 8.0}
    assert parse_memory_used("[N/A], 8192") is None
    assert parse_memory_used("") is None


@pytest.mark.parametrize("vram,preset", [
    (None, "cpu"),
    (4.0, "cpu"),      # smaller than the smallest preset
    (6.0, "cpu"),
    (7.6, "8gb"),      # an 8 GB card as torch reports it
    (8.0, "8gb"),
    (11.0, "8gb"),     # an 11 GB GTX 1080 Ti / RTX 2080 Ti
    (11.6, "12gb"),    # a 12 GB card reporting a little less
    (12.0, "12gb"),
    (14.74, "12gb"),   # Colab T4: 15 GB, more than 5% under 16
    (15.6, "16gb"),
    (23.6, "24gb"),
    (32.0, "24gb"),    # RTX 5090: the largest preset
    (79.2, "24gb"),
])
def test_propose_preset(vram, preset):
    gpu = None if vram is None else GpuInfo("card", vram)
    assert propose_preset(gpu) == preset


def test_detect_gpu_without_any_gpu(no_cuda):
    assert hardware.detect_gpu() is None


def test_detect_gpu_from_nvidia_smi_when_torch_is_a_cpu_build(no_cuda):
    seen = []

    def runner(args):
        seen.append(args)
        return "NVIDIA GeForce RTX 3060, 12288 MiB, 8.6, 580.95.05\n"

    assert hardware.detect_gpu(runner) == GpuInfo("NVIDIA GeForce RTX 3060", 12.0, (8, 6), "580.95.05")
    assert seen == [["--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader"]]


def test_detect_gpu_with_a_driver_too_old_for_the_compute_cap_field(no_cuda):
    """nvidia-smi before ~510 refuses the compute_cap field: ask again for name and memory only."""
    seen = []

    def runner(args):
        seen.append(args)
        if "compute_cap" in args[0]:
            raise subprocess.CalledProcessError(2, "nvidia-smi", 'Field "compute_cap" is not a valid field to query.')
        return "GeForce GTX 1080, 8119 MiB\n"

    assert hardware.detect_gpu(runner) == GpuInfo("GeForce GTX 1080", 7.93)
    assert [args[0] for args in seen] == ["--query-gpu=name,memory.total,compute_cap,driver_version",
                                          "--query-gpu=name,memory.total"]


def test_detect_gpu_when_nvidia_smi_fails(no_cuda):
    def failing(args):
        raise subprocess.CalledProcessError(9, "nvidia-smi", "NVIDIA-SMI has failed")

    assert hardware.detect_gpu(failing) is None


def test_detect_gpu_prefers_torch_cuda(monkeypatch):
    monkeypatch.setattr(hardware, "_torch_cuda", lambda: fake_cuda(total_gb=23.99))
    assert hardware.detect_gpu(lambda args: pytest.fail("nvidia-smi not needed")) == GpuInfo(
        "NVIDIA GeForce RTX 4090", 23.99)


def test_readers_return_none_on_cpu(no_cuda):
    assert hardware.torch_vram_gb() is None
    assert hardware.nvml_vram_gb() is None
    assert hardware.current_vram_gb() is None
    assert hardware.peak_vram_gb() is None
    assert hardware.vram_snapshot() is None


def test_readers_with_a_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "_torch_cuda", lambda: fake_cuda())
    monkeypatch.setattr(hardware, "_pynvml_reading", lambda index: {"used": 17.5, "total": 24.0})
    assert hardware.torch_vram_gb() == {"allocated": 3.0, "reserved": 4.0, "peak_reserved": 6.5}
    assert hardware.current_vram_gb() == 17.5  # NVML sees vLLM's memory too
    assert hardware.peak_vram_gb() == 6.5
    assert hardware.vram_snapshot() == {
        "vram/allocated_gb": 3.0, "vram/reserved_gb": 4.0, "vram/peak_reserved_gb": 6.5,
        "vram/used_gb": 17.5, "vram/total_gb": 24.0,
    }


def test_nvml_falls_back_to_nvidia_smi(monkeypatch):
    monkeypatch.setattr(hardware, "_pynvml_reading", lambda index: None)
    assert hardware.nvml_vram_gb(runner=lambda args: "6144, 12288\n") == {"used": 6.0, "total": 12.0}


def test_current_vram_falls_back_to_torch_without_nvml(no_cuda, monkeypatch):
    monkeypatch.setattr(hardware, "_torch_cuda", lambda: fake_cuda())
    assert hardware.current_vram_gb() == 3.0
    assert hardware.vram_snapshot() == {"vram/allocated_gb": 3.0, "vram/reserved_gb": 4.0, "vram/peak_reserved_gb": 6.5}


@pytest.mark.parametrize("visible,device", [(None, "0"), ("2,3", "2"), (" 1 ", "1"), ("GPU-5f3a", "GPU-5f3a"),
                                            ("", None), ("-1", None)])
def test_visible_device_is_cudas_device_0(monkeypatch, visible, device):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert hardware.visible_device() == device


def test_nvml_reads_the_first_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    asked = []
    monkeypatch.setattr(hardware, "_pynvml_reading", lambda device: asked.append(device))
    seen = []
    reading = hardware.nvml_vram_gb(runner=lambda args: seen.append(args) or "6144, 12288\n")
    assert reading == {"used": 6.0, "total": 12.0}
    assert asked == ["2"] and seen[0][0] == "--id=2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware.nvml_vram_gb(runner=lambda args: pytest.fail("no visible GPU: nothing to ask")) is None


def test_detect_gpu_from_nvidia_smi_picks_the_first_visible_gpu(no_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    listing = "NVIDIA GeForce RTX 3060, 12288 MiB\nNVIDIA GeForce RTX 4090, 24564 MiB\n"
    assert hardware.detect_gpu(lambda args: listing) == GpuInfo("NVIDIA GeForce RTX 4090", 23.99)


def test_each_step_writes_vram_to_metrics_and_starts_a_new_peak(monkeypatch, tmp_path):
    """RunFilesCallback on a faked CUDA card: vram/* keys in metrics.jsonl, the peak reset per step."""
    from grpo_box.callbacks import RunFilesCallback
    from grpo_box.runs import RunDir

    cuda = fake_cuda(peak_gb=6.5)
    monkeypatch.setattr(hardware, "_torch_cuda", lambda: cuda)
    monkeypatch.setattr(hardware, "_pynvml_reading", lambda device: {"used": 17.5, "total": 24.0})
    run = RunDir(tmp_path)
    files = RunFilesCallback(run, sample_every=100, max_steps=2)
    files.on_train_begin(None, SimpleNamespace(global_step=0), None)
    assert cuda.resets == 1  # the first step's peak leaves the model load out
    for step in (1, 2):
        files.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": 0.0, "reward": 0.5})
    assert cuda.resets == 3
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [1, 2]
    for record in metrics:
        assert {key: record[key] for key in record if key.startswith("vram/")} == {
            "vram/allocated_gb": 3.0, "vram/reserved_gb": 4.0, "vram/peak_reserved_gb": 6.5,
            "vram/used_gb": 17.5, "vram/total_gb": 24.0,
        }


def test_one_cuda_probe_survives_a_broken_driver(monkeypatch):
    """hardware.has_cuda is the probe modeling (training, chat) and inference use; a driver that
    raises from torch.cuda.is_available() reads as no GPU instead of a crash."""
    import torch

    from grpo_box import inference, modeling

    def broken() -> bool:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert hardware.has_cuda() is False
    assert modeling.has_cuda is hardware.has_cuda and inference.has_cuda is hardware.has_cuda


def test_inference_loads_unsloth_with_the_training_kwargs(monkeypatch, tmp_path):
    """inference._load_unsloth takes modeling.unsloth_load_kwargs, with vLLM's rank grown to the adapter's."""
    import json
    import sys
    import types

    from grpo_box import inference
    from grpo_box.modeling import unsloth_load_kwargs
    from grpo_box.presets import load_preset

    seen = {}

    class Stop(Exception):
        pass

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            seen.update(kwargs)
            raise Stop

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 512}))
    model = load_preset("8gb").model
    with pytest.raises(Stop):
        inference._load_unsloth("/models/x", str(tmp_path), model, fast_inference=True)
    assert seen == unsloth_load_kwargs(model, "/models/x", fast_inference=True, adapter_rank=512)
    assert seen["max_lora_rank"] == 512 and seen["gpu_memory_utilization"] == model.gpu_memory_utilization
    with pytest.raises(Stop):
        inference._load_unsloth("/models/x", None, model, fast_inference=False)
    assert seen["fast_inference"] is False


def test_generation_on_a_card_the_stack_cannot_use_is_refused_with_the_reason(monkeypatch):
    """Chat, evaluation and the merge check load through `load_for_generation`: on a Pascal card under
    a CUDA torch they are refused with the reason and the way to the CPU, not a kernel error mid-reply."""
    from grpo_box import inference, modeling

    monkeypatch.setattr(inference, "has_cuda", lambda: True)
    monkeypatch.setattr(modeling, "has_cuda", lambda: True)
    monkeypatch.setattr(hardware, "detect_gpu", lambda runner=None: GpuInfo("GTX 1080", 8.0, (6, 1)))
    with pytest.raises(modeling.GpuUnusableError) as refused:
        inference.load_for_generation("bundled:smollm2-135m-instruct")
    message = str(refused.value)
    assert message.startswith("this model cannot use the GPU: ") and "compute capability 6.1" in message
    assert message.endswith("hide the card (CUDA_VISIBLE_DEVICES= )")
