"""Training engine: a real CPU GRPO run on the bundled model (stop, resume, files), OOM handling,
and the Unsloth GPU boundary (checked on CPU, run for real behind the cuda marker)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, ROOT, run_cli

from grpo_box.modeling import prepare_environment, unsloth_load_kwargs, unsloth_peft_kwargs
from grpo_box.presets import load_preset, resolve_config
from grpo_box.runs import RunDir, open_run

# Small but real: 1 prompt x 4 completions x 32 tokens per step; target_length gives every group
# a spread of rewards, so each step has a learning signal.
FAST = [
    "grpo.num_generations=4", "grpo.per_device_train_batch_size=4", "grpo.max_completion_length=32",
    "output.save_steps=1", "output.sample_every=1", "data.size=40", "data.eval_size=4",
    "rewards=[{name: target_length, weight: 1.0, params: {target: 32}}, {name: think_format, weight: 0.5}, {name: correctness, weight: 1.0}]",
]




def _lora_b_norm(adapter_dir: Path) -> float:
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return sum(float(t.float().norm()) for name, t in tensors.items() if "lora_B" in name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real 3-step CPU run: started in the child process, stopped after step 1, resumed by the CLI."""
    from grpo_box import job
    from grpo_box.train import start_run

    root = tmp_path_factory.mktemp("runs")
    # save_steps=100: the only checkpoint before the resume is the one the stop request saves
    config = resolve_config("cpu", overrides=[*FAST, "grpo.max_steps=3", "output.save_steps=100",
                                              f"output.runs_dir={root}"])
    run = start_run(config)
    child = job.start(run)
    deadline = time.time() + 900
    while run.status().get("step", 0) < 1 and child.alive() and time.time() < deadline:
        time.sleep(0.5)
    alive = child.alive()
    code = job.stop(child)
    stopped = run.status()
    checkpoints = [c.name for c in run.checkpoints()]
    resumed = run_cli("resume", str(run.path)) if alive and code == 0 else None
    return {"run": run, "alive": alive, "stop_code": code, "stopped": stopped, "checkpoints": checkpoints,
            "resumed": resumed}


@pytest.mark.slow
def test_cpu_grpo_run_stops_resumes_and_saves_a_working_adapter(trained):
    run = trained["run"]
    assert trained["alive"], run.file("train.log").read_text()[-3000:]
    assert trained["stop_code"] == 0, run.file("train.log").read_text()[-3000:]
    stopped = trained["stopped"]
    assert stopped["state"] == "stopped" and 1 <= stopped["step"] < 3
    assert trained["checkpoints"] == [f"checkpoint-{stopped['step']}"]  # saved by the stop itself

    result = trained["resumed"]
    assert result.returncode == 0, result.stderr[-3000:]
    status = run.status()
    assert status["state"] == "finished" and status["step"] == 3

    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3]  # one line per step, none repeated by the resume
    for m in metrics:
        for key in ("reward", "reward_std", "rewards/target_length/mean", "rewards/think_format/mean",
                    "rewards/correctness/mean", "frac_reward_zero_std", "completions/mean_length", "wall_time",
                    "ram_peak_gb"):
            assert key in m, f"{key} missing from step {m['step']}"
    samples = run.samples()
    assert samples and len(samples[0]["completions"]) == 4
    assert set(samples[0]["rewards"]) == {"target_length", "think_format", "correctness"}

    assert run.has_adapter()
    assert _lora_b_norm(run.adapter_dir) > 0  # PEFT starts lora_B at zero: non-zero means it learned
    first = run.checkpoints()[0]
    assert _lora_b_norm(first) != pytest.approx(_lora_b_norm(run.adapter_dir))
    _adapter_loads_and_generates(run)


def _wait_for_state(run: RunDir, child: Any, states: tuple[str, ...], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while run.status().get("state") not in states and child.alive() and time.time() < deadline:
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_while_the_model_loads_stops_the_run_before_its_first_step(tmp_path):
    """The stop is kept until the model has loaded, then the run ends before a step that would only be
    thrown away: nothing trained, nothing lost, and a plain resume starts it."""
    from grpo_box import job
    from grpo_box.train import start_run

    config = resolve_config("cpu", overrides=[*FAST, "grpo.max_steps=3", "output.save_steps=100",
                                              f"output.runs_dir={tmp_path}"])
    run = start_run(config)
    child = job.start(run)
    _wait_for_state(run, child, ("running",))
    assert run.status().get("phase") == "loading", run.file("train.log").read_text()[-3000:]
    child.process.send_signal(signal.SIGTERM)
    assert job.wait(child) == 0, run.file("train.log").read_text()[-3000:]
    status = run.status()
    assert (status["state"], status["step"], status["phase"]) == ("stopped", 0, "done"), status
    assert "stopped before training began" in status["error"] and "resume starts it again" in status["error"]
    assert run.checkpoints() == [] and not run.has_adapter() and not run.metrics()
    run.check_resumable()


def test_a_child_killed_outright_is_marked_failed_not_left_running(tmp_path):
    from grpo_box import job
    from grpo_box.train import start_run

    run = start_run(resolve_config("cpu", overrides=[*FAST, f"output.runs_dir={tmp_path}"]))
    child = job.start(run)
    _wait_for_state(run, child, ("running",))
    child.process.kill()
    assert job.wait(child) == -signal.SIGKILL
    status = run.status()
    assert status["state"] == "failed"
    assert "killed by signal 9" in status["error"] and "ran out of RAM" in status["error"]
    assert str(run.file("train.log")) in status["error"]


@pytest.mark.slow
def test_the_readme_demo_trains_evaluates_and_exports(tmp_path):
    """The README's main command, shortened: one step, four held-out rows."""
    result = run_cli("demo", "--set", "grpo.max_steps=1", "--set", "data.eval_size=4", "--set",
                  "grpo.max_completion_length=32", "--set", f"output.runs_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = open_run(next(tmp_path.iterdir()))
    assert run.status()["state"] == "finished" and run.has_adapter()
    evaluation = json.loads(run.file("eval.json").read_text())
    assert evaluation["base"]["rows"] == evaluation["trained"]["rows"] == 4 and "delta" in evaluation
    # the last mile on a really trained adapter (test_export checks each part on a random LoRA)
    merged = re.search(r"merged: (\d+)/(\d+) prompts identical to base \+ adapter", result.stdout + result.stderr)
    assert merged and merged[1] == merged[2] and int(merged[2]) >= 3, result.stderr[-2000:]
    report = json.loads((run.path / "export" / "export.json").read_text())
    assert report["ok"] and {f["quant"] for f in report["files"]} == {"f16", "q4_k_m"}
    f16, q4 = (next(f for f in report["files"] if f["quant"] == q) for q in ("f16", "q4_k_m"))
    assert f16["verified"] and f16["identical"] + f16["near_ties"] == f16["prompts"] >= 3 and f16["identical"] >= 1
    assert f16["eos_token"] == "<|im_end|>" and f16["eos_ok"] and f16["chat_stops"] and f16["chat_reply"].strip()
    assert Path(q4["path"]).is_file() and q4["prompts"] >= 3 and q4["chat_template_ok"] and Path(q4["modelfile"]).is_file()
    assert "step 1/1 | reward" in result.stdout + result.stderr
    assert f"python -m grpo_box chat {run.path}" in result.stdout


def _adapter_loads_and_generates(run: RunDir) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_box.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(run.config().model.name))
    model = PeftModel.from_pretrained(base, str(run.adapter_dir))
    tok = AutoTokenizer.from_pretrained(str(run.adapter_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


OOM_SCRIPT = textwrap.dedent(
    """
    import sys
    from grpo_box.modeling import import_unsloth
    from grpo_box.runs import open_run
    from grpo_box.train import run_training

    run = open_run(sys.argv[1])
    import_unsloth(run.config())  # before transformers, as in the real worker
    import torch
    from transformers import TrainerCallback

    class OOMAtStep2(TrainerCallback):
        fired = False
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2 and not OOMAtStep2.fired:
                OOMAtStep2.fired = True
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    run_training(run, resume=sys.argv[2] == "resume", extra_callbacks=[OOMAtStep2()])
    """
)


@pytest.mark.slow
def test_out_of_memory_is_reported_and_auto_fit_retries_smaller(tmp_path, capsys):
    from grpo_box import job
    from grpo_box.train import start_run

    config = resolve_config("cpu", overrides=[*FAST, "grpo.max_steps=2", f"output.runs_dir={tmp_path}"])
    run = start_run(config)
    script = tmp_path / "oom.py"
    script.write_text(OOM_SCRIPT)

    first = subprocess.run([sys.executable, str(script), str(run.path), "new"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900, env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    status = run.status()
    assert status["state"] == "failed"
    assert status["error"].startswith("out of memory at step 2 during training; try: lower grpo.num_generations")
    assert [c.name for c in run.checkpoints()] == ["checkpoint-1"]  # the last checkpoint is kept

    fixed = open_run(run.path).config()
    fixed.auto_fit = True
    fixed.save(run.file("config.yaml"))
    # The script stands in for the worker child: out of memory again at step 2, now with auto-fit.
    # It must leave the run `retrying` with a smaller config; job.wait then resumes it in a fresh
    # worker process (no simulated OOM there), as the app and the CLI do.
    with (tmp_path / "oom.log").open("w") as log:
        child = job.Job(run, subprocess.Popen([sys.executable, str(script), str(run.path), "resume"], cwd=ROOT,
                                              env=ENV, stdout=log, stderr=subprocess.STDOUT))
        assert job.wait(child, poll_seconds=0.5) == 0, run.file("train.log").read_text()[-3000:]
    assert child.process.returncode == 0, (tmp_path / "oom.log").read_text()[-3000:]
    assert "out of memory at step 2: auto-fit resumes from the last checkpoint in a fresh process with: lower " \
           "grpo.num_generations from 4 to 3" in capsys.readouterr().err
    status = run.status()
    assert status["state"] == "finished", status
    assert status["auto_fit"]["after_step"] == 2 and "num_generations from 4 to" in status["auto_fit"]["change"]
    assert run.config().grpo.num_generations < 4
    assert run.file("config.before-autofit.yaml").is_file()
    assert [m["step"] for m in run.metrics()] == [1, 2]
    # the retry really ran with the smaller setting: step 2's group has 3 completions, step 1's had 4
    group_sizes = {s["step"]: len(s["completions"]) for s in run.samples()}
    assert group_sizes == {1: 4, 2: 3}


REWARD_OOM = textwrap.dedent(
    """
    import torch


    def oom_reward(prompts, completions, **kwargs):
        \"\"\"Stands in for a reward that runs a model on the GPU: it runs out of memory.\"\"\"
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
    """
)


@pytest.mark.slow
def test_out_of_memory_in_a_reward_function_is_reported_as_rollout(tmp_path):
    """Rewards run inside generate-and-score, and the rubric wraps their errors: still a rollout OOM."""
    from grpo_box.train import start_run

    reward_file = tmp_path / "oom_reward.py"
    reward_file.write_text(REWARD_OOM)
    config = resolve_config("cpu", overrides=[*FAST, "grpo.max_steps=1", f"output.runs_dir={tmp_path}",
                                              f"reward_file={reward_file}",
                                              'rewards=[{name: "user:oom_reward", weight: 1.0}]'])
    run = start_run(config)
    result = run_cli("worker", str(run.path))
    assert result.returncode == 1, result.stderr[-3000:]
    status = run.status()
    assert status["state"] == "failed", status
    assert status["error"].startswith(
        "out of memory at step 1 during rollout; try: lower grpo.num_generations from 4 to 3")
    assert status["oom"]["phase"] == "rollout" and "simulated" in status["oom"]["detail"]


STARTUP_OOM_SCRIPT = textwrap.dedent(
    """
    import sys
    from grpo_box import modeling
    from grpo_box.runs import open_run
    from grpo_box.train import run_training

    modeling.import_unsloth(open_run(sys.argv[1]).config())  # before transformers, as in the real worker
    import torch

    real_load = modeling._load_cpu
    mode = {}


    def load(config, path):
        # stands in for Unsloth's from_pretrained, where vLLM starts on a GPU
        if mode["now"] == "load":
            raise ValueError("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                             "when initializing the engine.")
        model, tokenizer = real_load(config, path)

        def generate(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")

        model.generate = generate  # the base-model evaluation's generation runs out of memory
        return model, tokenizer


    modeling._load_cpu = load
    for run_dir, now in zip(sys.argv[1::2], sys.argv[2::2]):
        mode["now"] = now
        run_training(open_run(run_dir))
    """
)


@pytest.mark.slow
def test_out_of_memory_at_start_up_is_reported_with_what_to_lower(tmp_path):
    from grpo_box.train import start_run

    runs = {}
    for mode, extra in (("load", []), ("eval", ["evaluate=true"])):
        overrides = [*FAST, "grpo.max_steps=1", f"output.runs_dir={tmp_path / mode}", *extra]
        runs[mode] = start_run(resolve_config("cpu", overrides=overrides))
    script = tmp_path / "startup_oom.py"
    script.write_text(STARTUP_OOM_SCRIPT)
    args = [arg for mode, run in runs.items() for arg in (str(run.path), mode)]
    result = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    for mode, what in (("load", "loading model / vLLM cache"), ("eval", "base-model evaluation")):
        status = runs[mode].status()
        assert status["state"] == "failed", status
        assert status["error"].startswith(f"out of memory at start-up ({what}); try: "), status["error"]
        assert "model.max_seq_length (now 256)" in status["error"] and "smaller model" in status["error"]
        assert status["oom"]["phase"] == "start-up" and status["oom"]["step"] == 0
    assert "No available memory for the cache blocks" in runs["load"].status()["oom"]["detail"]
    assert "OutOfMemoryError" in runs["eval"].status()["oom"]["detail"]


# Stands in for the worker of `resume`: loading the model fails (a missing file, no memory), and the
# script says whether the loader was reached at all.
RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from grpo_box import modeling
    from grpo_box.runs import open_run
    from grpo_box.train import run_training

    loaded = []

    def load_policy(config):
        loaded.append(True)
        raise RuntimeError("cannot load the model (simulated)")

    modeling.load_policy = load_policy
    out = {}
    for run_dir in sys.argv[1:]:
        loaded.clear()
        try:
            run_training(open_run(run_dir), resume=True)
        except Exception as exc:
            out[run_dir] = {"loaded": bool(loaded), "raised": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    """
)


def _stopped_run(root: Path, metrics: str, step: int, checkpoint: int) -> RunDir:
    """A run stopped at `step` (no training: its files written by hand) with a complete checkpoint."""
    from grpo_box.train import start_run

    run = start_run(resolve_config("cpu", overrides=[*FAST, "grpo.max_steps=6", f"output.runs_dir={root}"]))
    run.file("metrics.jsonl").write_text(metrics)
    saved = run.file("checkpoints") / f"checkpoint-{checkpoint}"
    saved.mkdir(parents=True)
    (saved / "trainer_state.json").write_text("{}")
    run.set_status("stopped", step=step, max_steps=6)
    return run


def test_a_resume_that_fails_before_training_keeps_the_runs_step(tmp_path):
    """Issue 15 item 5: a resume set step 0 before loading and trimmed the history only after the
    model loaded. Now a broken metrics.jsonl fails before the model loads, and a load that fails
    leaves the step of the checkpoint the run continues from, with the history trimmed to it."""
    lines = "".join(json.dumps({"step": i, "reward": 0.5}) + "\n" for i in range(1, 5))
    torn_inside = lines.replace('{"step": 2, "reward": 0.5}', '{"step": 2, "rew')  # line 2 of 4 cut off
    broken = _stopped_run(tmp_path, torn_inside, step=4, checkpoint=4)
    unloadable = _stopped_run(tmp_path, lines, step=4, checkpoint=3)  # step 4 ran, its checkpoint never came
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(broken.path), str(unloadable.path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    assert out[str(broken.path)]["loaded"] is False  # the history is checked before the model loads
    assert f"{broken.file('metrics.jsonl')}, line 2: not a JSON record" in out[str(broken.path)]["raised"]
    status = broken.status()
    assert (status["state"], status["step"]) == ("failed", 4) and "line 2" in status["error"]

    assert out[str(unloadable.path)] == {"loaded": True, "raised": "RuntimeError: cannot load the model (simulated)"}
    status = unloadable.status()
    assert (status["state"], status["step"], status["max_steps"]) == ("failed", 3, 6)
    assert [m["step"] for m in unloadable.metrics()] == [1, 2, 3]  # agrees with checkpoint-3


def test_out_of_memory_is_reported_even_when_the_model_cannot_be_sized(tmp_path, monkeypatch):
    """A Hub model outside the catalog, offline: no smaller setting can be estimated, the OOM still ends the run."""
    from grpo_box.runs import create_run
    from grpo_box.train import TrainingOOM, _handle_oom

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = resolve_config("8gb", overrides=["model.name=someone/not-in-the-catalog-7b", "auto_fit=true",
                                              f"output.runs_dir={tmp_path}"])
    run = create_run(config)  # (start_run would refuse the uncached Hub id offline before the run exists)
    run.set_status("running", step=3)
    _handle_oom(run, config, TrainingOOM(3, "rollout", "CUDA out of memory"))
    status = run.status()
    assert status["state"] == "failed" and "auto_fit" not in status
    assert status["error"] == ("out of memory at step 3 during rollout; "
                               "lower grpo.num_generations or grpo.max_completion_length")


def test_out_of_memory_in_the_final_evaluation_keeps_the_run_finished(tmp_path, bundled_model_dir):
    """The adapter is saved and the run finished before the trained model is evaluated: an OOM in
    that evaluation is recorded as evaluation_error, with the command that redoes it."""
    import torch
    from transformers import AutoTokenizer

    from grpo_box.runs import create_run
    from grpo_box.train import _final_evaluation

    class OutOfMemoryOnGenerate(torch.nn.Module):
        """Stands in for the trained policy on a full GPU (the CUDA boundary): generation runs out of memory."""

        def generate(self, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    config = resolve_config("cpu", overrides=[*FAST, "grpo.max_steps=2", f"output.runs_dir={tmp_path}"])
    run = create_run(config)
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")  # saved by training; the stand-in never loads it
    run.set_status("finished", step=2, max_steps=2, phase="done")
    model = OutOfMemoryOnGenerate().train()
    _final_evaluation(run, config, model, AutoTokenizer.from_pretrained(str(bundled_model_dir)))
    status = run.status()
    assert (status["state"], status["step"], status["phase"]) == ("finished", 2, "done")
    assert "evaluation failed (OutOfMemoryError: CUDA out of memory" in status["evaluation_error"]
    assert status["evaluation_error"].endswith(f"training is saved: run `python -m grpo_box eval {run.path}`")
    assert model.training  # handed back to the trainer as it was


def test_unsloth_gpu_arguments_follow_the_preset(monkeypatch):
    config = load_preset("8gb")
    kwargs = unsloth_load_kwargs(config, "/models/qwen")
    assert kwargs == {"model_name": "/models/qwen", "max_seq_length": 768, "load_in_4bit": True, "fast_inference": True,
                      "dtype": None, "max_lora_rank": 16, "gpu_memory_utilization": 0.55}
    assert unsloth_peft_kwargs(config) == {
        "r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "use_gradient_checkpointing": "unsloth", "random_state": 3407}
    for var in ("UNSLOTH_VLLM_STANDBY", "UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE", "UNSLOTH_ALLOW_CPU"):
        monkeypatch.delenv(var, raising=False)
    env = prepare_environment(config, cuda=True)
    # standby on, and Unsloth's own vLLM share for the card respected (the estimate uses it too)
    assert env["UNSLOTH_VLLM_STANDBY"] == "1" and env["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] == "0"
    assert "UNSLOTH_ALLOW_CPU" not in env
    config.model.vllm_standby_util_override = True
    assert prepare_environment(config, cuda=True)["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] == "1"
    config.model.vllm_standby = False
    env = prepare_environment(config, cuda=True)
    assert env["UNSLOTH_VLLM_STANDBY"] == "0" and env["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] == "0"
    monkeypatch.delenv("UNSLOTH_COMPILE_DISABLE", raising=False)
    cpu = prepare_environment(load_preset("cpu"), cuda=False)
    assert cpu["UNSLOTH_ALLOW_CPU"] == "1" and cpu["UNSLOTH_COMPILE_DISABLE"] == "1"  # eager on the CPU
    assert "UNSLOTH_COMPILE_DISABLE" not in prepare_environment(config, cuda=True)  # compiled on a GPU
    monkeypatch.setenv("UNSLOTH_COMPILE_DISABLE", "0")  # a user's own choice stands
    assert "UNSLOTH_COMPILE_DISABLE" not in prepare_environment(load_preset("cpu"), cuda=False)
    assert os.environ["UNSLOTH_COMPILE_DISABLE"] == "0"


def test_merge_and_inference_ask_the_one_cuda_probe_that_survives_a_broken_driver(monkeypatch):
    """Issue 14: merge's 16-bit dtype and inference's cache release called torch.cuda.is_available()
    (and is_bf16_supported()) themselves, which raise on a broken driver; they ask hardware.has_cuda."""
    import torch

    from grpo_box import inference, merge

    def broken(*args: Any) -> bool:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", broken)
    assert merge.half_dtype() is torch.float16
    inference._free_cuda_cache()  # no exception
    monkeypatch.setattr(merge, "has_cuda", lambda: True)  # the driver fails only after the probe
    assert merge.half_dtype() is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: True)
    assert merge.half_dtype() is torch.bfloat16
    engine = (ROOT / "grpo_box").rglob("*.py")
    # the engine (the app's ui/ aside); the cluster bundle's train.py runs without grpo_box
    probes = [p.name for p in engine if "cuda.is_available(" in p.read_text() and p.name != "hardware.py"
              and not {"cluster_files", "ui"} & set(p.parts)]
    assert probes == []


def test_inductor_pool_aliasing_stays_a_warning_under_ci():
    """With `CI` set, PyTorch 2.13 turns Inductor's own pool views into errors (CI once failed on it)."""
    code = ("import torch._functorch.config as c; before = c.error_on_custom_op_aliasing; "
            "from grpo_box.modeling import tolerate_inductor_pool_aliasing as t; t(); "
            "print(before, c.error_on_custom_op_aliasing)")
    env = {**ENV, "CI": "1"}
    env.pop("TORCHINDUCTOR_ERROR_ON_CUSTOM_OP_ALIASING", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_unsloth_is_called_with_those_arguments(monkeypatch):
    """The GPU loader hands exactly those arguments to Unsloth (CUDA itself is faked at that boundary)."""
    import types

    from grpo_box import modeling

    import torch

    calls = {}
    config = load_preset("24gb")
    model = torch.nn.ModuleDict({name: torch.nn.Linear(1, 1) for name in config.lora.target_modules})

    class FakeFastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["load"] = kwargs
            return model, "tokenizer"

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["peft"] = (model, kwargs)
            return "peft-model"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FakeFastLanguageModel))
    assert modeling._load_unsloth(config, "/m") == ("peft-model", "tokenizer")
    assert calls["load"] == unsloth_load_kwargs(config, "/m")
    assert calls["peft"] == (model, unsloth_peft_kwargs(config))


def test_step_summary_is_one_readable_line():
    from grpo_box.callbacks import step_summary

    logs = {"loss": 0.2, "reward": 1.5, "reward_std": 0.5, "rewards/think_format/mean": 1.0,
            "rewards/correctness/mean": 0.25, "completions/mean_length": 40.4, "completions/clipped_ratio": 0.1,
            "frac_reward_zero_std": 0.0, "step_time": 12.34, "entropy": 2.1}
    assert step_summary(3, 10, logs) == ("step 3/10 | reward 1.500 ± 0.500 | think_format 1.000  correctness 0.250"
                                         " | length 40 (10% cut) | no-signal groups 0% | 12.3 s")
    assert step_summary(10, 10, {"train_runtime": 301.2, "train_loss": 0.1}) == "training done: 10 steps in 301 s"


def test_grpo_arguments(tmp_path):
    from grpo_box.train import grpo_args

    run = RunDir(tmp_path)
    gpu = grpo_args(load_preset("8gb"), run, [0.5, 0.5, 0.5, 2.0], cuda=True)
    assert "use_vllm" not in gpu  # Unsloth turns it on itself when the model carries a vLLM engine
    assert gpu["optim"] == "adamw_8bit" and gpu["reward_weights"] == [0.5, 0.5, 0.5, 2.0]
    cpu = grpo_args(load_preset("cpu"), run, [1.0, 2.0], cuda=False)
    assert cpu["use_cpu"] and not cpu["bf16"] and not cpu["fp16"] and "use_vllm" not in cpu
    assert cpu["num_generations"] == 4 and cpu["max_completion_length"] == 64


# The GPU path's own tests (weights moved, peak VRAM against the estimate) are in tests/test_gpu_path.py.


def test_the_cli_prints_a_failed_final_evaluation_after_a_finished_run(tmp_path: Path, capsys) -> None:
    """`train`/`resume` end with the worker's summary: a finished run whose evaluation failed says so."""
    from grpo_box.__main__ import _finish
    from grpo_box.config import RunConfig
    from grpo_box.runs import create_run

    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path), "r"
    run = create_run(config)
    run.set_status("finished", step=2, max_steps=2, evaluation_error="the trained model's evaluation failed "
                   "(OutOfMemoryError: x); training is saved: run `python -m grpo_box eval r`")
    assert _finish(run) == 0
    err = capsys.readouterr().err
    assert err.startswith("evaluation: the trained model's evaluation failed") and "python -m grpo_box eval" in err
