"""Cluster bundles (cluster.py, cluster_plan.py, cluster_import.py, ui/cluster_panel.py).

- the GPU split and the batch arithmetic, and the splits that are refused;
- every generated file through its own tool: the accelerate config through accelerate's config
  class, grpo_config.yaml into trl.GRPOConfig, `bash -n` on the scripts, and dry runs of launch.sh
  and slurm.sbatch with stand-ins for trl, curl, accelerate, srun and scontrol that record what they
  were asked (the recorded `trl vllm-serve` arguments then go through TRL's own parser);
- the vendored reward code is the package's, byte for byte, and imports on its own;
- a real run (slow): a bundle's own train.py under `accelerate launch` with 2 CPU processes over
  gloo, 2 steps, vLLM off by its documented flag; both ranks score completions, the metric names are
  the appliance's rubric names, and the adapter comes back with import-adapter, then chats and
  exports to GGUF through the CLI.

Note: `accelerate launch --num_processes 2 --cpu` starts ONE process in accelerate 1.15 (several CPU
processes need mpirun there); two CPU processes over gloo are `--multi_gpu` with ACCELERATE_USE_CPU=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ENV, ROOT, run_cli

from grpo_box.cluster import build_bundle, vendor_closure
from grpo_box.cluster_plan import ClusterError, plan_batch, plan_split, tensor_parallel
from grpo_box.config import GRPOSettings

USER_REWARDS = '''
def has_digit(prompts, completions, **kwargs):
    """1.0 when the completion holds a digit."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if any(ch.isdigit() for ch in t) else 0.0 for t in texts]
'''


def make_run(root: Path, name: str, *overrides: str, user_file: Path | None = None):
    from grpo_box.config import RewardSpec
    from grpo_box.presets import resolve_config
    from grpo_box.train import start_run

    config = resolve_config("cpu", None, [f"output.runs_dir={root}", f"output.run_name={name}", *overrides])
    if user_file:
        config.rewards = [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0),
                          RewardSpec("user:has_digit", 0.5)]
        config.reward_file = str(user_file)
    return start_run(config)


# -- the arithmetic ---------------------------------------------------------------------------
@pytest.mark.parametrize("gpus, nodes, vllm, heads, expected", [
    # (vllm_gpus, tp, train_machines, train_processes, idle)
    (8, 1, None, None, (1, 1, 1, 7, 0)),
    (8, 1, 2, (32, 8), (2, 2, 1, 6, 0)),
    (8, 1, 0, None, (0, 0, 1, 8, 0)),
    (16, 2, None, (32, 8), (8, 8, 1, 8, 0)),
    (16, 2, None, (9, 3), (8, 1, 1, 8, 7)),  # SmolLM2-135M: 9 heads, vLLM can use 1 of 8
    (24, 3, 4, (16, 4), (4, 4, 2, 16, 4)),  # 4 of node 0's 8 GPUs serve, the other 4 idle
    (16, 2, 0, None, (0, 0, 2, 16, 0)),
])
def test_gpu_split(gpus, nodes, vllm, heads, expected):
    s = plan_split(gpus, nodes, vllm, heads)
    assert (s.vllm_gpus, s.vllm_tp, s.train_machines, s.train_processes, s.idle_gpus) == expected
    assert s.vllm_gpus + s.train_processes + (s.per_node - s.vllm_gpus if nodes > 1 and s.vllm_gpus else 0) == gpus


@pytest.mark.parametrize("gpus, nodes, vllm, words", [
    (1, 1, None, "no GPU to train on"),
    (1, 1, 1, "no GPU to train on"),
    (4, 1, 4, "at most --vllm-gpus 3"),
    (10, 3, None, "do not split evenly"),
    (16, 2, 9, "at most 8"),
    (8, 1, -1, "give 0"),
    (0, 1, None, "at least 1"),
])
def test_impossible_splits_are_refused(gpus, nodes, vllm, words):
    with pytest.raises(ClusterError, match=words):
        plan_split(gpus, nodes, vllm)


@pytest.mark.parametrize("per_device, accum, n, processes, expected", [
    # (per_device, grad_accum, global)
    (8, 1, 4, 7, (4, 1, 28)),   # lcm(7, 4) = 28: 7 prompts where the run had 2
    (8, 1, 4, 8, (1, 1, 8)),    # same 8 completions, one per process
    (8, 1, 4, 2, (4, 1, 8)),
    (4, 1, 2, 2, (2, 1, 4)),
    (8, 4, 8, 4, (8, 1, 32)),   # the run's 32 completions, now in one micro-batch per process
    (2, 8, 8, 2, (2, 4, 16)),   # micro-batches stay at the run's 2 (it fitted a small card): accumulate 4
    (16, 1, 16, 6, (8, 1, 48)),  # lcm(6, 16) = 48: 3 prompts where the run had 1
])
def test_batch_is_recomputed_in_whole_groups(per_device, accum, n, processes, expected):
    plan = plan_batch(GRPOSettings(per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
                                   num_generations=n), processes)
    assert (plan.per_device, plan.grad_accum, plan.global_batch) == expected
    assert plan.global_batch % n == 0 and plan.global_batch >= per_device * accum
    assert plan.per_device <= per_device


def test_reward_names_are_the_rubrics_without_importing_the_user_file(tmp_path):
    from grpo_box.cluster import reward_names
    from grpo_box.config import RewardSpec, RunConfig
    from grpo_box.rewards import build_rubric

    (tmp_path / "r.py").write_text(USER_REWARDS)
    config = RunConfig(rewards=[RewardSpec("correctness"), RewardSpec("user:has_digit"), RewardSpec("correctness", 0.5)],
                       reward_file=str(tmp_path / "r.py"))
    funcs, _ = build_rubric(config.rewards, config.reward_file, template="think")
    assert reward_names(config) == [f.__name__ for f in funcs] == ["correctness", "user:has_digit", "correctness_2"]


def test_import_finds_the_newest_numbered_checkpoint_and_skips_other_folders(tmp_path):
    from grpo_box.cluster_import import ImportAdapterError, find_adapter

    for name in ("checkpoint-final", "checkpoint-2", "checkpoint-10"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "adapter_config.json").write_text("{}")
    assert find_adapter(tmp_path) == tmp_path / "checkpoints" / "checkpoint-10"
    only_named = tmp_path / "named"
    (only_named / "checkpoints" / "checkpoint-final").mkdir(parents=True)
    (only_named / "checkpoints" / "checkpoint-final" / "adapter_config.json").write_text("{}")
    with pytest.raises(ImportAdapterError, match="give the job's output folder"):
        find_adapter(only_named)


def test_an_import_writes_a_finished_run_and_its_record(tmp_path):
    """A cluster job's output folder (stand-in files) becomes a run; imported.json is written whole."""
    from grpo_box.cluster_import import IMPORT_RECORD, import_adapter
    from grpo_box.config import RunConfig

    output = tmp_path / "output"
    (output / "adapter").mkdir(parents=True)
    (output / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"], "base_model_name_or_path": "/cluster/m"}))
    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path / "runs"), "tiny"
    config.save(output / "run_config.yaml")
    (output / "job.json").write_text(json.dumps({"steps": 2, "max_steps": 2}))
    run = import_adapter(output)
    assert run.path == tmp_path / "runs" / "tiny-cluster" and run.status()["state"] == "finished"
    record = json.loads(run.file(IMPORT_RECORD).read_text())
    assert record["original_base_model"] == "/cluster/m" and record["job"]["steps"] == 2
    assert not list(run.path.rglob("*.tmp"))


def test_a_bundle_that_fails_half_way_leaves_the_earlier_bundle_and_no_half_one(tmp_path):
    """The bundle is written beside --out and swapped in at the end (cluster.staged)."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(12)))
    source = tmp_path / "config.yaml"
    source.write_text(f"preset: cpu\ndata: {{source: {data}, size: 8, eval_size: 2}}\n")
    out = tmp_path / "bundles" / "b"
    build_bundle(source, 2, out=out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    data.write_text('{"question": "cut off')  # the data now fails to load, after the bundle folder is begun
    from grpo_box.data import DataError

    with pytest.raises(DataError, match="not valid JSON"):
        build_bundle(source, 4, out=out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["b"]  # no temporary folder left beside it


def test_tensor_parallel_follows_the_heads():
    assert tensor_parallel(8, (32, 8)) == 8
    assert tensor_parallel(8, (12, 4)) == 4
    assert tensor_parallel(4, (14, 2)) == 2
    assert tensor_parallel(8, None) == 8


# -- the generated files ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, bundled_model_dir):
    return make_run(tmp_path_factory.mktemp("runs"), "cpu-run", "data.size=48", "data.eval_size=8")


CASES = {  # gpus, nodes, backend, vllm_gpus -> (processes, machines, vLLM devices, train devices, global batch)
    "8gpu-zero3": ((8, 1, "zero3", None), (7, 1, "0", "1,2,3,4,5,6,7", 28)),
    "8gpu-fsdp-colocate": ((8, 1, "fsdp", 0), (8, 1, None, "0,1,2,3,4,5,6,7", 8)),
    "16gpu-2nodes-zero3": ((16, 2, "zero3", None), (8, 1, "0", "0,1,2,3,4,5,6,7", 8)),
    "16gpu-2nodes-fsdp": ((16, 2, "fsdp", None), (8, 1, "0", "0,1,2,3,4,5,6,7", 8)),
}


@pytest.fixture(scope="module", params=list(CASES))
def bundle(request, cpu_run, tmp_path_factory):
    (gpus, nodes, backend, vllm), expected = CASES[request.param]
    out = tmp_path_factory.mktemp("bundles") / request.param
    return build_bundle(cpu_run.path, gpus, nodes=nodes, backend=backend, vllm_gpus=vllm, out=out), expected


def test_accelerate_config_loads_with_accelerates_own_class(bundle):
    from accelerate.commands.config.config_args import load_config_from_file

    b, (processes, machines, *_) = bundle
    config = load_config_from_file(str(b.path / "accelerate_config.yaml"))
    assert (config.num_processes, config.num_machines) == (processes, machines)
    assert config.mixed_precision == "bf16"
    if b.backend == "zero3":
        assert config.distributed_type == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == 3
    else:
        assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2


def test_trl_config_builds_a_grpo_config_with_whole_groups(bundle, tmp_path, monkeypatch):
    from trl import GRPOConfig

    b, (processes, _, _, _, global_batch) = bundle
    settings = yaml.safe_load((b.path / "grpo_config.yaml").read_text())
    # TRL derives the generation batch from the world size and checks it holds whole groups: give it the
    # bundle's process count (this test runs in one process)
    monkeypatch.setattr(GRPOConfig, "world_size", property(lambda self: processes))
    # use_cpu only because this machine has no GPU: TrainingArguments refuses bf16 on a CPU-only machine otherwise
    config = GRPOConfig(**{**settings, "output_dir": str(tmp_path)}, use_cpu=True)
    assert config.bf16 and config.use_vllm
    assert config.vllm_mode == ("server" if b.split.vllm_gpus else "colocate")
    assert config.generation_batch_size == global_batch and global_batch % config.num_generations == 0
    run = yaml.safe_load((b.path / "run_config.yaml").read_text())
    g = run["grpo"]
    assert (config.num_generations, config.learning_rate, config.max_steps, config.beta, config.loss_type,
            config.max_completion_length, config.temperature) == (
        g["num_generations"], g["learning_rate"], g["max_steps"], g["beta"], g["loss_type"], g["max_completion_length"],
        g["temperature"])
    assert config.reward_weights == [r["weight"] for r in run["rewards"]]
    job = yaml.safe_load((b.path / "job.yaml").read_text())
    assert job["lora"]["r"] == run["lora"]["r"] and job["lora"]["lora_alpha"] == run["lora"]["alpha"]
    assert job["lora"]["target_modules"] == list(run["lora"]["target_modules"]) and job["lora"]["target_modules"]
    assert job["split"]["train_processes"] == processes and job["batch"]["global_batch"] == global_batch


def test_bundle_has_the_logs_folder_the_scripts_write_to(bundle):
    """SLURM opens --output before the script runs and does not create its folder: the bundle ships it."""
    b, _ = bundle
    assert (b.path / "logs").is_dir() and (b.path / "logs" / ".keep").is_file()
    if b.split.nodes > 1:
        [output] = [line.split("=", 1)[1] for line in (b.path / "slurm.sbatch").read_text().splitlines()
                    if line.startswith("#SBATCH --output=")]
        assert (b.path / output).parent.is_dir()


def test_scripts_pass_bash_n_and_requirements_are_pinned(bundle):
    b, _ = bundle
    scripts = ["launch.sh"] + (["slurm.sbatch"] if b.split.nodes > 1 else [])
    assert (b.path / "slurm.sbatch").exists() == (b.split.nodes > 1)
    for script in scripts:
        out = subprocess.run(["bash", "-n", str(b.path / script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "@@" not in (b.path / script).read_text()
    from packaging.requirements import Requirement
    from packaging.version import Version

    reqs = [Requirement(line) for line in (b.path / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    pins = {}
    for req in reqs:  # each an exact pin, nothing else: no extras, markers or URLs
        [spec] = req.specifier
        assert spec.operator == "==" and not req.extras and req.marker is None and req.url is None, str(req)
        assert len(Version(spec.version).release) >= 2, str(req)
        pins[req.name] = spec.version
    assert len(pins) == len(reqs)
    assert not {"unsloth", "unsloth_zoo", "bitsandbytes"} & set(pins)
    assert ("deepspeed" in pins) == (b.backend == "zero3")
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name in ("trl", "transformers", "peft", "accelerate", "datasets", "math-verify", "vllm", "torch"):
        assert f'"{name}=={pins[name]}"' in pyproject, name
    assert Version("0.21.0") <= Version(pins["vllm"]) <= Version("0.31.0")  # TRL 1.15's supported range


STUBS = {
    "trl": """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$STUB_LOG/trl.args"; echo "$CUDA_VISIBLE_DEVICES" > "$STUB_LOG/trl.devices"
echo $$ > "$STUB_LOG/trl.pid"; exec sleep 300
""",
    "curl": """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG/curl.calls"
for _ in $(seq 50); do [[ -f "$STUB_LOG/trl.pid" ]] && exit 0; sleep 0.1; done; exit 7
""",
    "accelerate": """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$STUB_LOG/accelerate.$$.args"
echo "$CUDA_VISIBLE_DEVICES|${MACHINE_RANK:-}|$MODEL" > "$STUB_LOG/accelerate.$$.env"
""",
    "scontrol": """#!/usr/bin/env bash
printf 'node-a\\nnode-b\\n'
""",
    "srun": """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG/srun.calls"
while [[ "$1" == --* ]]; do shift; done
SLURM_PROCID=0 exec "$@"
""",
}


def _stub_env(tmp: Path) -> dict[str, str]:
    bin_dir, log = tmp / "bin", tmp / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log)}


def _gone(pid: int, wait: float = 10.0) -> bool:
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _accelerate_call(log: Path) -> tuple[list[str], list[str]]:
    [args] = log.glob("accelerate.*.args")
    return args.read_text().splitlines(), args.with_suffix(".env").read_text().strip().split("|")


def _check_vllm_serve_args(args: list[str], tp: int) -> None:
    """The recorded `trl vllm-serve` arguments, through TRL's own parser and command builder."""
    from trl.scripts.vllm_serve import build_command, make_parser

    assert args[0] == "vllm-serve"
    parsed, extra = make_parser().parse_args_and_config(args[1:], return_remaining_strings=True)
    assert extra == []
    assert parsed.tensor_parallel_size == tp and parsed.data_parallel_size == 1
    assert parsed.gpu_memory_utilization == 0.9 and parsed.max_model_len == 256
    assert "--tensor-parallel-size" in build_command(parsed)


def test_scripts_dry_run(bundle, tmp_path):
    """One node: launch.sh starts the server, waits for its health, trains and stops the server. Several
    nodes: slurm.sbatch serves on node 0 and trains on the others, through launch.sh's roles."""
    if bundle[0].split.nodes > 1:
        _slurm_dry_run(bundle, tmp_path)
        _launch_refuses_one_machine(bundle[0], tmp_path / "alone")
    else:
        _launch_dry_run(bundle, tmp_path)


def _launch_dry_run(bundle, tmp_path: Path) -> None:
    b, (processes, machines, vllm_devices, train_devices, _) = bundle
    env = _stub_env(tmp_path)
    out = subprocess.run([str(b.path / "launch.sh"), "--max-steps", "2"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    log = tmp_path / "log"
    args, (devices, _, model) = _accelerate_call(log)
    assert devices == train_devices and model == yaml.safe_load((b.path / "job.yaml").read_text())["model"]
    assert args[:2] == ["launch", "--config_file"] and args[args.index("--num_processes") + 1] == str(processes)
    assert args[args.index("--num_machines") + 1] == str(machines)
    assert args[-2:] == ["--max-steps", "2"] and "train.py" in args
    if vllm_devices is None:  # colocate: no server
        assert not (log / "trl.args").exists() and "--vllm-host" not in args
        return
    assert (log / "trl.devices").read_text().strip() == vllm_devices
    _check_vllm_serve_args((log / "trl.args").read_text().splitlines(), b.split.vllm_tp)
    assert "http://127.0.0.1:8000/health" in (log / "curl.calls").read_text()
    assert args[args.index("--vllm-host") + 1] == "127.0.0.1"
    assert _gone(int((log / "trl.pid").read_text())), "the vLLM server was left running"


def _launch_refuses_one_machine(b, tmp_path: Path) -> None:
    """A several-node bundle's launch.sh does not run server and training on one machine: it refuses
    and names slurm.sbatch and the per-node commands, before starting anything."""
    tmp_path.mkdir()
    env = _stub_env(tmp_path)
    for args in ([], ["all"], ["--max-steps", "2"], ["all", "--max-steps", "2"]):
        out = subprocess.run([str(b.path / "launch.sh"), *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (args, out.stdout + out.stderr)
        for words in (f"this bundle is for {b.split.nodes} nodes", "sbatch slurm.sbatch", "./launch.sh serve",
                      "MACHINE_RANK=", "./launch.sh train"):
            assert words in out.stderr, (words, out.stderr)
        assert "@@" not in out.stderr
    assert not list((tmp_path / "log").iterdir()), "launch.sh started something before refusing"


def _slurm_dry_run(bundle, tmp_path: Path) -> None:
    b, (processes, machines, vllm_devices, train_devices, _) = bundle
    env = {**_stub_env(tmp_path), "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_SUBMIT_DIR": str(b.path)}
    out = subprocess.run(["bash", str(b.path / "slurm.sbatch"), "--max-steps", "2"], env=env, cwd=b.path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    log = tmp_path / "log"
    calls = (log / "srun.calls").read_text()
    assert "--nodelist=node-a ./launch.sh serve" in calls and "--nodelist=node-b" in calls
    args, (devices, rank, _) = _accelerate_call(log)
    assert devices == train_devices and rank == "0"
    assert args[args.index("--num_processes") + 1] == str(processes)
    assert args[args.index("--num_machines") + 1] == str(machines)
    assert args[args.index("--main_process_ip") + 1] == "node-b"
    assert args[args.index("--vllm-host") + 1] == "node-a"
    assert (log / "trl.devices").read_text().strip() == vllm_devices
    _check_vllm_serve_args((log / "trl.args").read_text().splitlines(), b.split.vllm_tp)
    assert _gone(int((log / "trl.pid").read_text())), "the vLLM server step was left running"


def test_readme_tells_the_split_the_batch_and_the_translations(bundle):
    b, (processes, _, _, _, global_batch) = bundle
    text = (b.path / "README.md").read_text()
    for words in (b.split.describe(), f"= **{global_batch}** completions", "## Translations from the appliance",
                  "import-adapter", "rewards/correctness/mean", "GRPO_BOX_NO_VLLM=1", "--no-vllm",
                  "bfloat16"):
        assert words in text, words
    assert ("sbatch slurm.sbatch" in text) == (b.split.nodes > 1)
    assert ("MACHINE_RANK=0 ./launch.sh train" in text) == (b.split.nodes > 1)


# -- the vendored reward code -----------------------------------------------------------------
def test_vendored_reward_code_is_the_packages_and_imports_alone(tmp_path):
    from grpo_box.cluster import vendor

    manifest = vendor(tmp_path / "vendor")
    package = ROOT / "grpo_box"
    for rel, digest in manifest.items():
        assert hashlib.sha256((package / rel.removeprefix("grpo_box/")).read_bytes()).hexdigest() == digest
    assert {"rewards/rubric.py", "rewards/correctness.py", "tasks.py", "cpu_backend.py"} <= set(vendor_closure())
    # models.py comes along (config names the bundled model from its constants; it needs only the
    # standard library); the engine's training, data and model-loading code does not
    assert not {"train.py", "data.py", "modeling.py", "inference.py"} & set(vendor_closure())
    code = ("import json, sys\nsys.path.insert(0, sys.argv[1])\n"
            "from grpo_box.rewards.builtin import list_rewards\nfrom grpo_box.rewards.rubric import build_rubric\n"
            "from grpo_box import cpu_backend\n"
            "funcs, _ = build_rubric([r['name'] for r in list_rewards()], template='think')\n"
            "mods = {k: getattr(m, '__file__', '') for k, m in sys.modules.items() if k.startswith('grpo_box')}\n"
            "print(json.dumps({'n': len(funcs), 'mods': mods, 'heavy': [m for m in ('unsloth', 'gradio', "
            "'transformers') if m in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "vendor")], capture_output=True, text=True,
                         env={k: v for k, v in ENV.items() if k != "PYTHONPATH"}, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] > 5 and result["heavy"] == []
    assert all(path.startswith(str(tmp_path / "vendor")) for path in result["mods"].values()), result["mods"]


# -- the CLI and the app ----------------------------------------------------------------------
def test_cli_refuses_one_gpu_with_a_vllm_gpu_and_writes_a_bundle(cpu_run, tmp_path):
    out = run_cli("cluster", str(cpu_run.path), "--gpus", "1", "--out", str(tmp_path / "b1"), timeout=300)
    assert out.returncode == 2 and "no GPU to train on" in out.stderr and not (tmp_path / "b1").exists()
    out = run_cli("cluster", str(cpu_run.path), "--gpus", "4", "--backend", "fsdp", timeout=300)
    assert out.returncode == 0, out.stderr
    assert (cpu_run.path / "cluster" / "4gpu-fsdp" / "launch.sh").is_file()
    assert "3 processes on 1 machine" in out.stdout
    out = run_cli("cluster", str(cpu_run.path), "--gpus", "4", "--out", str(cpu_run.path), timeout=300)
    assert out.returncode == 2 and "is not a cluster bundle" in out.stderr


def test_a_relative_reward_file_is_found_from_another_folder(tmp_path, monkeypatch, bundled_model_dir):
    """Training makes reward_file absolute when it creates the run (runs.absolute_paths, from the folder
    it started in), so exporting the run from elsewhere (the app's folder) copies the same file; a
    config YAML's paths are taken as `train` takes them, `~` included."""
    made = tmp_path / "made-here"
    made.mkdir()
    (made / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.chdir(made)
    run = make_run(tmp_path / "runs", "relative", "data.size=24", "data.eval_size=4", user_file=Path("my_rewards.py"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    bundle = build_bundle(run.path, 2, out=tmp_path / "from-run")
    assert (bundle.path / "user_rewards" / "my_rewards.py").read_text() == USER_REWARDS
    assert yaml.safe_load((bundle.path / "job.yaml").read_text())["reward_file"] == "user_rewards/my_rewards.py"

    from grpo_box.models import data_home

    monkeypatch.setenv("GRPO_BOX_HOME", str(data_home()))  # the bundled model stays where it is
    monkeypatch.setenv("HOME", str(made))
    config = tmp_path / "config.yaml"
    config.write_text("preset: cpu\nreward_file: ~/my_rewards.py\ndata: {size: 24, eval_size: 4}\n"
                      "rewards: [{name: correctness, weight: 1.0}, {name: 'user:has_digit', weight: 0.5}]\n")
    bundle = build_bundle(config, 2, out=tmp_path / "from-config")
    assert (bundle.path / "user_rewards" / "my_rewards.py").read_text() == USER_REWARDS
    saved = yaml.safe_load((bundle.path / "run_config.yaml").read_text())
    assert saved["reward_file"] == str((made / "my_rewards.py").resolve())


def test_the_cluster_panel_takes_the_clis_options(cpu_run, tmp_path):
    """The panel's handler with every field: nodes, vLLM GPUs and the output folder reach the engine,
    empty boxes take the engine's defaults, and impossible splits get the engine's own messages."""
    from grpo_box.ui import cluster_panel

    export = cluster_panel.export(lambda name: cpu_run.path if name == "cpu-run" else None)
    assert export(None, 8, 1, None, "zero3", "") == "Choose a run first."
    text = export("cpu-run", 16.0, 2.0, None, "fsdp", str(tmp_path / "two-nodes"))
    assert text.startswith(f"Cluster bundle: {tmp_path / 'two-nodes'}") and "16 GPUs on 2 nodes" in text, text
    assert (tmp_path / "two-nodes" / "slurm.sbatch").is_file()
    job = yaml.safe_load((tmp_path / "two-nodes" / "job.yaml").read_text())
    assert (job["split"]["nodes"], job["split"]["vllm_gpus"]) == (2, 8)  # a whole node serves by default
    text = export("cpu-run", 4, "", 0, "zero3", "  ")  # empty nodes and folder: the engine's defaults
    assert "4 training processes on 1 machine, vLLM inside each" in text, text
    assert (cpu_run.path / "cluster" / "4gpu-zero3" / "launch.sh").is_file()
    for gpus, nodes, vllm, words in ((1, 1, None, "no GPU to train on"), (16, 2, 9, "at most 8"),
                                     (10, 3, None, "do not split evenly"), (None, 1, None, "at least 1"),
                                     (8, 1, -1, "give 0")):
        refused = export("cpu-run", gpus, nodes, vllm, "zero3", str(tmp_path / "refused"))
        assert refused.startswith("Not exported:") and words in refused, refused
        with pytest.raises(ClusterError) as engine:
            plan_split(gpus or 0, nodes, vllm)
        assert str(engine.value) in refused
    assert not (tmp_path / "refused").exists()


@pytest.fixture
def app(tmp_path):
    from ui_helpers import launch_app

    yield from launch_app(tmp_path)


def test_the_runs_tab_exports_for_cluster(app, bundled_model_dir):
    make_run(app.runs_dir, "ui-run", "data.size=24", "data.eval_size=4")
    session = app.client()
    session.call("/runs_list")  # the Runs tab's dropdown accepts listed runs only
    result = session.form("/runs_cluster", {"runs.pick": "ui-run", "runs.cluster_backend": "fsdp"})
    assert "Cluster bundle:" in result["runs.cluster_result"] and "7 processes" in result["runs.cluster_result"]
    assert (app.runs_dir / "ui-run" / "cluster" / "8gpu-fsdp" / "accelerate_config.yaml").is_file()
    result = session.form("/runs_cluster", {"runs.pick": "ui-run", "runs.cluster_gpus": 16, "runs.cluster_nodes": 2,
                                            "runs.cluster_vllm_gpus": 4})
    assert "16 GPUs on 2 nodes" in result["runs.cluster_result"], result
    assert (app.runs_dir / "ui-run" / "cluster" / "16gpu-2nodes-zero3" / "slurm.sbatch").is_file()
    refused = session.form("/runs_cluster", {"runs.pick": "ui-run", "runs.cluster_gpus": 1})["runs.cluster_result"]
    assert refused.startswith("Not exported:") and "no GPU to train on" in refused


# -- a real run: the bundle's own train.py on 2 CPU processes -------------------------------------
@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, bundled_model_dir):
    tmp = tmp_path_factory.mktemp("cluster-run")
    rewards = tmp / "my_rewards.py"
    rewards.write_text(USER_REWARDS)
    run = make_run(tmp / "runs", "tiny", "grpo.max_steps=2", "grpo.num_generations=2",
                   "grpo.per_device_train_batch_size=4", "grpo.max_completion_length=8", "data.size=24",
                   "data.eval_size=4", "lora.r=4", "lora.alpha=8", user_file=rewards)
    bundle = build_bundle(run.path, 3, vllm_gpus=1, out=tmp / "bundle")  # 1 vLLM GPU + 2 training processes
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**ENV, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp / "hf")}  # no accelerate default config from the user's home
    started = time.time()
    out = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "train.py", "--no-vllm"],
                         cwd=bundle.path, env=env, capture_output=True, text=True, timeout=1200)
    print(f"2-process CPU run: {time.time() - started:.0f} s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return run, bundle


@pytest.mark.slow
def test_both_ranks_train_with_the_appliances_reward_names(trained_bundle):
    from grpo_box.rewards import build_rubric

    run, bundle = trained_bundle
    config = run.config()
    funcs, _ = build_rubric(config.rewards, config.reward_file, template=config.data.template)
    names = [f.__name__ for f in funcs]
    assert names == ["think_format", "correctness", "user:has_digit"] == bundle.reward_names
    output = bundle.path / "output"
    ranks = [json.loads((output / "ranks" / f"rank-{i}.json").read_text()) for i in (0, 1)]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["steps"] == 2
        assert rank["reward_code"] == str(bundle.path / "vendor" / "grpo_box")
        assert set(rank["completions_scored"]) == set(names) and min(rank["completions_scored"].values()) > 0
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    logged = {k.split("/")[1] for k in metrics[0] if k.startswith("rewards/") and k.endswith("/mean")}
    assert logged == set(names)
    assert (output / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_adapter_imports_back_and_chats_and_exports(trained_bundle):
    run, bundle = trained_bundle
    out = run_cli("import-adapter", str(bundle.path / "output"), "--name", "tiny-back", timeout=300)
    assert out.returncode == 0, out.stderr
    back = run.path.parent / "tiny-back"
    status = json.loads((back / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 2 and status["imported"]
    peft = json.loads((back / "adapter" / "adapter_config.json").read_text())
    assert peft["r"] == 4 and Path(peft["base_model_name_or_path"]).is_dir()
    assert len((back / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((back / "config.yaml").read_text())["data"] == yaml.safe_load(
        (run.path / "config.yaml").read_text())["data"]  # the same held-out split for eval
    out = run_cli("import-adapter", str(bundle.path / "output"), "--name", "tiny-back", timeout=300)
    assert out.returncode == 2 and "exists" in out.stderr
    chat = run_cli("chat", str(back), "--prompt", "hi", "--max-tokens", "8", timeout=600)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    export = run_cli("export", str(back), "--quant", "q8_0", timeout=1200)
    assert export.returncode == 0, export.stdout[-2000:] + export.stderr[-2000:]
    assert list((back / "export").glob("*q8_0.gguf"))
