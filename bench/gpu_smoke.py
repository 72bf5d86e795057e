"""The GPU smoke check's driver (issue 13); `bench/gpu_smoke.sh` unpacks the bundle and runs it.

On the GPU (default) it:
  1. prints the environment facts the GPU path depends on (torch/CUDA/card, the bf16 answer with and
     without emulation, whether torch has the functorch aliasing key, free memory from mem_get_info and
     NVML, what GRPO Box detects and proposes, the library versions);
  2. builds a randomly initialised model with a catalog model's shape (default: the 8gb preset's
     model, Qwen2.5-1.5B) and the bundled tokenizer — no weights are downloaded;
  3. prints `estimate` for it (no vLLM: the bundle cannot carry vLLM's 320 MB wheel);
  4. trains a few steps through the engine's own CLI on the real GPU path without vLLM (4-bit
     Unsloth, PEFT LoRA, 8-bit Adam, Unsloth's GRPOTrainer), with evaluation before and after;
  5. checks that the LoRA weights moved, and the measured peak VRAM (torch's allocator in the
     training process, the model's own footprint, not the card's) against the estimate (±25%);
  6. repeats one step with model.dtype=float16 (Unsloth's TypeError when bf16/fp16 disagree with it);
and ends with a short summary, one line per part, PASS or FAIL. It exits 1 when any part failed.

`--dry-run` runs the same plumbing on the CPU in this repository's venv with a tiny model of the same
family (no 4-bit, no 8-bit Adam), so a test can prove the script works without a GPU.

A training run that passes --run-timeout, or this script being interrupted, ends its worker too: the
engine's worker has its own session (job.start), so killing the CLI parent would leave it holding
the GPU and the machine lock; its pid is read from the run's status.json. `--cleanup` does only that
(and the copy below) for every run under --work: bench/gpu_smoke.sh calls it when it exits.
With $OUT set (the device machine's output folder), facts.json, the summary and each run's
status.json, metrics.jsonl, train.log, eval.json, config.yaml and cli.log (the training command's
output) are copied there at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOLERANCE = 0.25
# copied to $OUT; the CLI trains attached (its worker's output is the CLI's, no train.log): cli.log keeps it
RUN_FILES = ("status.json", "metrics.jsonl", "train.log", "cli.log", "eval.json", "config.yaml")
REWARD_FILE = textwrap.dedent('''
    """A reward that differs between completions of a random model, so GRPO has a signal."""


    def parity(prompts, completions, completion_ids, **kwargs):
        """Share of even token ids in the completion; e.g. [2, 3] -> 0.5."""
        return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]
''')


class Summary:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def add(self, part: str, ok: bool, detail: str) -> bool:
        self.rows.append((part, ok, detail))
        print(f"[{'PASS' if ok else 'FAIL'}] {part}: {detail}", flush=True)
        return ok

    def text(self) -> str:
        failed = [part for part, ok, _ in self.rows if not ok]
        return "\n".join(["==== GPU smoke summary ====",
                          *(f"{'PASS' if ok else 'FAIL'}  {part:<28} {detail}" for part, ok, detail in self.rows),
                          f"==== {len(self.rows) - len(failed)} passed, {len(failed)} failed ===="])

    def print(self) -> int:
        print("\n" + self.text())
        return 1 if any(not ok for _, ok, _ in self.rows) else 0


def _alive(pid: int, started: float | None) -> bool:
    """Whether `pid` is a live process, and the one started at `started` (psutil's create_time, as
    the worker recorded it) when both are known: a recycled pid is not the worker."""
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except psutil.Error:
        return False


def stop_worker(run: Path, grace: float = 10.0) -> str:
    """End the training worker of `run` (pid from its status.json, else the machine lock's note):
    SIGTERM to its process group (it leads its own session: vLLM's and the data loaders' children go
    too), SIGKILL after `grace` seconds. Returns what happened, for the summary."""
    try:
        status = json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    pid, started = status.get("pid"), status.get("pid_started")
    if not pid:  # killed before the worker wrote its pid: the parent noted it in the machine lock
        try:
            from grpo_box import locks

            note = locks.running_job() or {}
        except Exception:
            note = {}
        if note.get("run") and Path(note["run"]).resolve() == run.resolve():
            pid, started = note.get("pid"), None
    if not pid:
        return "no worker pid recorded"
    pid = int(pid)
    if not _alive(pid, started):
        return f"worker {pid} already gone"

    def send(sig: int) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    send(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline:
        if not _alive(pid, started):
            return f"worker {pid} stopped (SIGTERM)"
        time.sleep(0.2)
    send(signal.SIGKILL)
    for _ in range(50):
        if not _alive(pid, started):
            return f"worker {pid} killed (SIGKILL after {grace:.0f} s)"
        time.sleep(0.2)
    return f"worker {pid} still alive after SIGKILL"


def stop_workers(work: Path, grace: float = 10.0) -> list[str]:
    return [f"{run.name}: {stop_worker(run, grace)}" for run in sorted((work / "runs").glob("*"))
            if (run / "status.json").is_file()]


def copy_results(work: Path, out: Path, summary: Summary | None = None) -> None:
    """facts.json, the summary and each run's files into `out` ($OUT on the device machine)."""
    out.mkdir(parents=True, exist_ok=True)
    if (work / "facts.json").is_file():
        shutil.copy2(work / "facts.json", out / "facts.json")
    if summary is not None and summary.rows:
        (out / "summary.txt").write_text(summary.text() + "\n")
        (out / "summary.json").write_text(json.dumps([{"part": part, "ok": ok, "detail": detail}
                                                      for part, ok, detail in summary.rows], indent=2))
    for run in sorted((work / "runs").glob("*")):
        for name in RUN_FILES:
            if (run / name).is_file():
                (out / "runs" / run.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, out / "runs" / run.name / name)


def section(title: str) -> None:
    print(f"\n---- {title} ----", flush=True)


def environment_facts(dry_run: bool) -> dict:
    import torch

    from grpo_box import hardware, presets

    facts: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                   "cuda_available": torch.cuda.is_available()}
    for name in ("unsloth", "unsloth_zoo", "trl", "peft", "transformers", "accelerate", "bitsandbytes", "datasets",
                 "vllm", "xformers", "nvidia-ml-py"):
        try:
            facts[f"version:{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts[f"version:{name}"] = None
    import torch._functorch.config as functorch_config

    facts["torch_has_error_on_custom_op_aliasing"] = hasattr(functorch_config, "error_on_custom_op_aliasing")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(device=props.name, capability=f"{props.major}.{props.minor}",
                     total_gb=round(props.total_memory / 2**30, 2),
                     bf16_supported=torch.cuda.is_bf16_supported(),
                     bf16_supported_without_emulation=torch.cuda.is_bf16_supported(including_emulation=False))
        free, total = torch.cuda.mem_get_info()
        facts["mem_get_info_free_gb"] = round(free / 2**30, 2)
    gpu = hardware.detect_gpu()
    facts["grpo_box_detect_gpu"] = gpu.__dict__ if gpu else None
    facts["grpo_box_gpu_problem"] = hardware.gpu_problem(gpu)
    facts["grpo_box_torch_problem"] = hardware.torch_problem()
    facts["grpo_box_proposed_preset"] = presets.propose_preset(gpu)
    facts["grpo_box_nvml_device"] = hardware.nvml_device()
    facts["grpo_box_nvml_reading"] = hardware.nvml_vram_gb()
    facts["grpo_box_free_vram_gb"] = hardware.free_vram_gb(gpu)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=index,name,pci.bus_id,driver_version,compute_cap,"
                              "memory.used,memory.total", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        facts["nvidia_smi"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        facts["nvidia_smi"] = f"unavailable ({exc})"
    facts["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    for key, value in facts.items():
        print(f"  {key}: {value}")
    return facts


def build_random_model(model_id: str, tokenizer_dir: Path, out: Path, tiny: bool) -> Path:
    """A random model with `model_id`'s catalog shape (vocabulary: the tokenizer's), saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from grpo_box.catalog import lookup

    arch = lookup(model_id)
    if arch is None:
        raise SystemExit(f"{model_id} is not in grpo_box.catalog")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    shape = dict(hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                 num_hidden_layers=arch.n_layers, num_attention_heads=arch.n_heads,
                 num_key_value_heads=arch.n_kv_heads, head_dim=arch.head_dim)
    if tiny:  # the dry run: the same family at a size two CPU cores train in seconds
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16)
    family = "qwen2" if "qwen2" in model_id.lower() else "llama"
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), tie_word_embeddings=arch.tied_embeddings,
                                  max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **shape)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"  {family} model, {params / 1e6:.0f}M parameters ({shape['num_hidden_layers']} layers, hidden "
          f"{shape['hidden_size']}, vocab {len(tokenizer)}) in {out}")
    return out


def run_overrides(model_dir: Path, work: Path, steps: int, dry_run: bool, extra: list[str]) -> list[str]:
    reward_file = work / "smoke_rewards.py"
    reward_file.write_text(REWARD_FILE)
    sets = [
        f"model.name={model_dir}", "model.fast_inference=false", "model.vllm_standby=false",
        f"model.load_in_4bit={'false' if dry_run else 'true'}", "model.max_seq_length=512",
        f"grpo.max_steps={steps}", "grpo.num_generations=4", "grpo.per_device_train_batch_size=8",
        "grpo.gradient_accumulation_steps=1", "grpo.max_prompt_length=160", "grpo.max_completion_length=48",
        "grpo.learning_rate=0.0005", f"grpo.optim={'adamw_torch' if dry_run else 'adamw_8bit'}",
        "data.source=task:arithmetic", "data.size=64", "data.eval_size=8", f"output.runs_dir={work / 'runs'}",
        "output.save_steps=1000", f"reward_file={reward_file}", 'rewards=[{name: "user:parity", weight: 1.0}]',
        *extra,
    ]
    return [arg for item in sets for arg in ("--set", item)]


def train(model_dir: Path, work: Path, steps: int, dry_run: bool, extra: list[str], timeout: float) -> tuple[dict, str]:
    """`python -m grpo_box train` (the engine's CLI, a training child) → (the run's files, its output)."""
    preset = "cpu" if dry_run else "8gb"
    before = set((work / "runs").glob("*")) if (work / "runs").is_dir() else set()
    cmd = [sys.executable, "-m", "grpo_box", "train", "--preset", preset, "--force",
           *run_overrides(model_dir, work, steps, dry_run, extra)]
    started = time.time()
    new_runs = lambda: sorted(set((work / "runs").glob("*")) - before)  # noqa: E731
    note = ""
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:  # only the CLI parent was killed: its worker trains on
        rc, note = 124, f"ran past {timeout:.0f} s (--run-timeout)"
        text = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                       for part in (exc.stdout, exc.stderr))
        note += "; " + ("; ".join(stop_worker(run) for run in new_runs()) or "no run directory")
    except BaseException:  # Ctrl-C / SIGTERM of this script: end the worker before leaving
        for run in new_runs():
            print(f"  {run.name}: {stop_worker(run, grace=5.0)}", flush=True)
        raise
    print(textwrap.indent(text[-3000:], "  | "))
    if note:
        print(f"  {note}", flush=True)
    runs = new_runs()
    if not runs:
        raise RuntimeError(f"no run directory was created (exit {rc}{'; ' + note if note else ''})")
    run = runs[-1]
    (run / "cli.log").write_text(text)
    files = {"rc": rc, "note": note, "seconds": round(time.time() - started, 1), "path": str(run),
             "status": json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {},
             "metrics": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
             if (run / "metrics.jsonl").is_file() else [],
             "eval": json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else None}
    log = run / "train.log"
    return files, text + (log.read_text(errors="replace") if log.is_file() else "")


def lora_moved(run_path: str) -> tuple[bool, str]:
    """PEFT starts every lora_B at zero: any nonzero value was put there by an optimizer step."""
    from safetensors.torch import load_file

    weights = Path(run_path) / "adapter" / "adapter_model.safetensors"
    if not weights.is_file():
        return False, f"no adapter at {weights}"
    tensors = load_file(str(weights))
    b = [t.float().abs().max().item() for name, t in tensors.items() if "lora_B" in name]
    if not b:
        return False, "no lora_B tensors in the adapter"
    moved = sum(1 for value in b if value > 0)
    return moved == len(b), f"{moved}/{len(b)} lora_B matrices moved from zero (max |B| {max(b):.2e})"


def compare_peak(run: dict, model_dir: Path, dry_run: bool) -> tuple[bool, str]:
    """Measured: the largest per-step peak of torch's allocator in the training process (the model's
    own footprint; no vLLM here). Expected: the estimate less its CUDA context (not torch's)."""
    from grpo_box.catalog import arch_from_config_json
    from grpo_box.config import RunConfig
    from grpo_box.memory import estimate

    config = RunConfig.load(Path(run["path"]) / "config.yaml")
    arch = arch_from_config_json(model_dir)
    card = None if dry_run else __import__("torch").cuda.get_device_properties(0).total_memory / 2**30
    est = estimate(config, arch=arch, vram_gb=card)
    expected = est.total_gb - est.breakdown.get("cuda_context", 0.0)
    peaks = [m.get("vram/peak_reserved_gb") for m in run["metrics"] if m.get("vram/peak_reserved_gb")]
    if not peaks:
        return dry_run, f"no vram/peak_reserved_gb in metrics (estimate {expected:.2f} GB{', CPU: not measured' if dry_run else ''})"
    measured = max(peaks)
    ratio = measured / expected if expected else float("inf")
    ok = abs(ratio - 1.0) <= TOLERANCE
    return ok, (f"measured peak {measured:.2f} GB vs estimate {expected:.2f} GB (ratio {ratio:.2f}, "
                f"allowed {1 - TOLERANCE:.2f}-{1 + TOLERANCE:.2f}); estimate parts {json.dumps(est.breakdown)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (model, runs)")
    parser.add_argument("--tokenizer", type=Path, help="the bundled model's tokenizer folder (required to run)")
    parser.add_argument("--model-shape", default="unsloth/Qwen2.5-1.5B-Instruct",
                        help="a catalog model whose layers and widths the random model gets (default: the 8gb preset's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="the same plumbing on the CPU with a tiny model")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds one training run may take")
    parser.add_argument("--cleanup", action="store_true",
                        help="only end any worker still training a run under --work (and copy results to $OUT)")
    args = parser.parse_args()
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if args.cleanup:
        for line in stop_workers(args.work, grace=5.0):
            print(f"  {line}")
        if out_dir is not None:
            copy_results(args.work, out_dir)
        return 0
    if args.tokenizer is None:
        parser.error("--tokenizer is required")
    args.work.mkdir(parents=True, exist_ok=True)
    summary = Summary()

    def terminated(signum, frame):  # `timeout`'s SIGTERM: unwind, so the worker is ended and $OUT filled
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    try:
        return run_checks(args, summary)
    except KeyboardInterrupt as exc:
        summary.add("interrupted", False, f"{exc or 'Ctrl-C'}; workers: {'; '.join(stop_workers(args.work, 5.0)) or 'none'}")
        return summary.print()
    finally:
        if out_dir is not None:
            try:
                copy_results(args.work, out_dir, summary)
                print(f"results copied to {out_dir}")
            except OSError as exc:
                print(f"could not copy results to {out_dir}: {exc}", file=sys.stderr)


def run_checks(args: argparse.Namespace, summary: Summary) -> int:
    """Every part in turn, each recorded in `summary`; the exit status."""
    section("environment")
    try:
        facts = environment_facts(args.dry_run)
        cuda_ok = args.dry_run or bool(facts.get("cuda_available"))
        summary.add("environment", cuda_ok, f"torch {facts['torch']} CUDA {facts['torch_cuda']}, "
                    f"{facts.get('device', 'no GPU')} cc {facts.get('capability', '-')}, bf16 "
                    f"{facts.get('bf16_supported')} (without emulation {facts.get('bf16_supported_without_emulation')}), "
                    f"aliasing key {facts['torch_has_error_on_custom_op_aliasing']}")
        (args.work / "facts.json").write_text(json.dumps(facts, indent=2, default=str))
    except Exception:
        traceback.print_exc()
        summary.add("environment", False, "could not read the environment (see above)")
        return summary.print()

    section("imports (the bundle on PYTHONPATH)")
    code = ("from grpo_box.models import use_data_home_for_caches; use_data_home_for_caches()\n"  # not ./unsloth_compiled_cache
            "import unsloth, trl, peft, datasets, math_verify\n"
            "import grpo_box.train, grpo_box.rewards\n"
            "from trl import GRPOTrainer\n"
            "import importlib.util as u\n"
            "print('bitsandbytes', u.find_spec('bitsandbytes') is not None)\n")
    env = {**os.environ, **({"UNSLOTH_ALLOW_CPU": "1"} if args.dry_run else {})}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    if out.returncode != 0:
        print(textwrap.indent(out.stderr[-3000:], "  | "))
        missing = [line for line in out.stderr.splitlines() if "ModuleNotFoundError" in line or "ImportError" in line]
        summary.add("imports", False, (missing[-1] if missing else f"exit {out.returncode}") +
                    " (add the package to bench/gpu_smoke_prep.sh)")
        return summary.print()
    summary.add("imports", True, "unsloth, trl, peft, datasets, math_verify, grpo_box; " + out.stdout.strip())

    section("random model")
    try:
        model_dir = build_random_model(args.model_shape, args.tokenizer, args.work / "model", tiny=args.dry_run)
        summary.add("random model", True, f"{args.model_shape} shape{' (tiny, dry run)' if args.dry_run else ''}")
    except Exception as exc:
        traceback.print_exc()
        summary.add("random model", False, f"{type(exc).__name__}: {exc}")
        return summary.print()

    section("estimate")
    try:
        out = subprocess.run([sys.executable, "-m", "grpo_box", "estimate", "--preset", "cpu" if args.dry_run else "8gb",
                              *run_overrides(model_dir, args.work, args.steps, args.dry_run, [])],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        print(textwrap.indent(out.stdout + out.stderr[-2000:], "  "))
        summary.add("estimate", out.returncode == 0, "printed above" if out.returncode == 0 else f"exit {out.returncode}")
    except Exception as exc:
        summary.add("estimate", False, f"{type(exc).__name__}: {exc}")

    section(f"train {args.steps} steps (no vLLM{'' if args.dry_run else ': 4-bit Unsloth, PEFT, 8-bit Adam'}) and evaluate")
    run = None
    try:
        run, _log = train(model_dir, args.work, args.steps, args.dry_run, ["evaluate=true"], args.run_timeout)
        state = run["status"].get("state")
        summary.add("train", run["rc"] == 0 and state == "finished" and len(run["metrics"]) >= args.steps,
                    f"{state}, {len(run['metrics'])} steps logged in {run['seconds']} s "
                    f"(error: {run['status'].get('error')}){'; ' + run['note'] if run['note'] else ''}")
        rewards = [m.get("reward_std") for m in run["metrics"]]
        clipped = [m.get("completions/clipped_ratio") for m in run["metrics"]]
        print(f"  reward_std per step {rewards}; clipped ratio per step {clipped}")
    except Exception as exc:
        traceback.print_exc()
        summary.add("train", False, f"{type(exc).__name__}: {exc}")
    if run is not None:
        evaluated = run["eval"] or {}
        summary.add("evaluate", bool(evaluated.get("base")) and bool(evaluated.get("trained")),
                    f"eval.json keys {sorted(evaluated)}")
        try:
            summary.add("LoRA weights moved", *lora_moved(run["path"]))
        except Exception as exc:
            summary.add("LoRA weights moved", False, f"{type(exc).__name__}: {exc}")
        try:
            summary.add("peak VRAM vs estimate", *compare_peak(run, model_dir, args.dry_run))
        except Exception as exc:
            traceback.print_exc()
            summary.add("peak VRAM vs estimate", False, f"{type(exc).__name__}: {exc}")

    section("one step with model.dtype=float16")
    try:
        fp16, log = train(model_dir, args.work, 1, args.dry_run, ["model.dtype=float16", "evaluate=false"],
                          args.run_timeout)
        refused = "float16 precision but you want to use bfloat16" in log
        state = fp16["status"].get("state")
        summary.add("float16 step", fp16["rc"] == 0 and state == "finished" and not refused,
                    f"{state}{'; Unsloth refused the precision flags' if refused else ''} "
                    f"(error: {fp16['status'].get('error')}){'; ' + fp16['note'] if fp16['note'] else ''}")
    except Exception as exc:
        traceback.print_exc()
        summary.add("float16 step", False, f"{type(exc).__name__}: {exc}")
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
