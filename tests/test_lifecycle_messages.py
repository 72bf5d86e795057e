"""Issue 15: every failure a user can fix is one line, and the CLI says what it is about to cost.

Item 13 (a GPU preset on a CPU-only machine warns, with the expected time per step), the
tracebacks that became messages (`chat` on a missing path, `train --model` of a Hub id offline,
`eval` on a run folder it cannot write, `preview -n -1`, `estimate --vram 0`), the CLI's
catch-all that takes UserError alone, and the two things a process start leaves behind: Unsloth's
compiled cache in the current directory and torchao/pytree warnings on a fresh install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_box import hardware
from grpo_box.config import RunConfig
from grpo_box.memory import preflight
from grpo_box.presets import load_preset
from tests.helpers import ENV, ROOT, make_random_lora, run_cli


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "detect_gpu", lambda runner=None: None)


# ---------------------------------------------------------------- item 13: a GPU preset on the CPU


def test_a_gpu_preset_without_a_gpu_warns_with_the_time_per_step(no_gpu) -> None:
    result = preflight(load_preset("8gb"))
    assert result.proceed and result.warning and result.seconds_per_step > 120
    assert result.message.startswith("warning: no GPU detected, but the 8gb preset is made for GPUs with 8 GB: it "
                                      "will run on the CPU without 4-bit QLoRA or vLLM rollouts, in float32, up to about ")
    assert re.search(r"up to about \d+ (min|h) per step on \d+ CPU cores? \(300 steps: about \d+ (h|days)\)", result.message)
    assert "--preset cpu" in result.message


def test_the_cpu_preset_says_its_pace_without_a_warning(no_gpu) -> None:
    result = preflight(load_preset("cpu"))
    assert result.proceed and not result.warning
    assert re.fullmatch(r"no GPU detected: training uses the CPU and RAM, up to about \d+ s per step on \d+ CPU cores? "
                        r"\(60 steps: about \d+ min\); RAM: about [\d.]+ GB of this machine's [\d.]+ GB, fits",
                        result.message), result.message


def test_the_step_time_is_calibrated_on_the_cpu_preset_and_scales() -> None:
    from grpo_box.catalog import resolve_arch
    from grpo_box.memory import cpu_step_seconds

    cpu = load_preset("cpu")
    assert 15 <= cpu_step_seconds(cpu, resolve_arch(cpu.model.name), cores=2) <= 30  # measured: 20-25 s
    gpu = load_preset("8gb")
    assert cpu_step_seconds(gpu, resolve_arch(gpu.model.name), cores=2) > 20 * cpu_step_seconds(
        cpu, resolve_arch(cpu.model.name), cores=2)


@pytest.mark.skipif(_has_cuda(), reason="the warning is for machines without a GPU")
def test_train_with_a_gpu_preset_on_the_cpu_warns_and_a_missing_model_is_one_line(tmp_path: Path) -> None:
    """`train --preset 8gb --model someone/not-a-model` offline: the CPU warning comes before the run
    starts, and the model that cannot be had fails the run with one line, not 120 lines of traceback.
    Run from a scratch directory: no unsloth_compiled_cache/ may be left there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-m", "grpo_box", "train", "--preset", "8gb", "--model", "someone/not-a-model",
                          "--set", "data.source=task:arithmetic", "--set", f"output.runs_dir={tmp_path / 'runs'}"],
                         cwd=cwd, capture_output=True, text=True, timeout=600,
                         env={**ENV, "HF_HUB_OFFLINE": "1", "GRPO_BOX_HOME": str(tmp_path / "home")})
    both = out.stdout + out.stderr
    assert out.returncode != 0, both
    assert "warning: no GPU detected, but the 8gb preset is made for GPUs with 8 GB" in out.stderr
    assert "model 'someone/not-a-model' is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in both
    assert "Traceback" not in both
    assert list(cwd.iterdir()) == []


# ---------------------------------------------------------------- tracebacks that became messages


@pytest.mark.parametrize("source,message", [
    ("/no/such/run", "error: model '/no/such/run': no such file or folder"),
    ("./exports/model-q4_k_m.gguf", "error: model './exports/model-q4_k_m.gguf': no such file or folder"),
    ("someone/not-a-model", "error: model 'someone/not-a-model' is not in the local Hugging Face cache"),
])
def test_chat_on_a_source_that_does_not_exist_is_one_line(source: str, message: str) -> None:
    out = run_cli("chat", source, "--prompt", "hi", timeout=120, HF_HUB_OFFLINE="1")
    assert out.returncode == 2 and out.stderr.startswith(message), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args,message", [
    (["preview", "-n", "-1"], "argument -n: -1 must be more than 0"),
    (["preview", "-n", "0"], "argument -n: 0 must be more than 0"),
    (["estimate", "--vram", "0"], "argument --vram: 0 must be more than 0"),
    (["estimate", "--vram", "-8"], "argument --vram: -8 must be more than 0"),
    (["estimate", "--vram", "nan"], "argument --vram: nan must be more than 0"),
])
def test_counts_and_sizes_must_be_positive(args: list[str], message: str) -> None:
    out = run_cli(*args, timeout=60)
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""


@pytest.fixture(scope="module")
def run(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from grpo_box.runs import create_run

    config = RunConfig()
    config.output.runs_dir = str(tmp_path_factory.mktemp("runs"))
    config.data.size, config.data.eval_size = 8, 2
    config.grpo.max_completion_length = 8
    run = create_run(config)
    make_random_lora(bundled_model_dir, run.adapter_dir)
    return run


def test_eval_on_a_run_folder_it_cannot_write_shows_the_results_then_one_line(run) -> None:
    """The scores are printed before the write, so a read-only folder costs no scoring."""
    eval_json = run.path / "eval.json"
    if os.geteuid() == 0:  # root writes through read-only permissions: a folder in its place blocks the rename
        eval_json.mkdir()
    else:
        run.path.chmod(0o555)
    try:
        out = run_cli("eval", str(run.path), "--trained-only", "--limit", "1", "--json", timeout=600,
                      OMP_NUM_THREADS="1")
    finally:
        run.path.chmod(0o755)
    assert out.returncode == 2, out.stderr[-3000:]
    shown = json.loads(out.stdout)  # the results, on stdout, in full
    assert shown["trained"]["rows"] == 1 and "accuracy" in shown["trained"]
    assert f"error: could not write the results to {eval_json}" in out.stderr and "they are shown above" in out.stderr
    assert "Traceback" not in out.stderr and not eval_json.is_file()


def test_the_catch_all_takes_user_errors_only(monkeypatch, capsys) -> None:
    """A bug keeps its traceback; a UserError is one line with exit status 2."""
    from grpo_box import __main__ as cli
    from grpo_box.errors import UserError

    def bug(args):
        raise ValueError("an internal bug")

    def fixable(args):
        raise UserError("change this")

    monkeypatch.setitem(cli.COMMANDS, "presets", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["presets"])
    monkeypatch.setitem(cli.COMMANDS, "presets", fixable)
    assert cli.main(["presets"]) == 2 and capsys.readouterr().err == "error: change this\n"


# ---------------------------------------------------------------- what a process start leaves behind


def test_unsloth_compiles_into_the_data_home_not_the_current_directory(tmp_path: Path) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    code = ("from grpo_box.config import RunConfig; from grpo_box.modeling import import_unsloth; "
            "import_unsloth(RunConfig())")
    env = {k: v for k, v in ENV.items() if k != "UNSLOTH_COMPILE_LOCATION"}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={**env, "GRPO_BOX_HOME": str(home), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    assert (home / "unsloth_compiled_cache").is_dir()


def test_install_imports_the_bundled_model_without_scary_warnings(tmp_path: Path) -> None:
    """install.sh's model import starts with quiet_library_logs(), which hides torchao's "Failed to
    load …_C_mxfp8….so" and torch's pytree deprecation notes (here shown on the import that prints them)."""
    line = next(ln for ln in (ROOT / "install.sh").read_text().splitlines() if "ensure_bundled_model" in ln)
    assert re.search(r"quiet_library_logs\(\); print\(ensure_bundled_model\(\)\)", line), line
    code = "from grpo_box.models import quiet_library_logs; quiet_library_logs(); import peft, transformers"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**ENV, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
