"""What the app costs: start-up, one timer tick, reattaching, its effect on training speed, chat
latency and export time.

    .venv/bin/python bench/ui.py [--steps 6] [--skip-training] [--skip-chat] [--skip-export]

Prints, on this machine:
- start: seconds from `python app.py` to the first page served (target < 10 s on 2 cores);
- tick: milliseconds of one Train-tab timer tick (monitor poll + plot frames + samples) on a run
  with 5,000 metric lines and 500 sample groups: the first full draw, a tick with one new line,
  and an idle tick (target < 100 ms);
- reattach: seconds from a fresh process importing the app's watch module to the first poll of a
  run another process is training (the restart case without gradio's own start-up, which `start`
  measures);
- step ratio: mean training step time with the app open and a page polling every 4 s (the Train
  tab's TICK_SECONDS), over the
  same config trained by the CLI alone (target < 1.03). Both runs are real CPU runs on the
  bundled model (tiny settings, `--steps` each; steps after the first are compared).
- chat: time to the first streamed token in the Chat tab against `python -m grpo_box chat RUN
  --prompt P` on the same prompt (greedy, a run with a random LoRA on the bundled model); both
  cold (the app's first message loads the model, as the CLI does) and, for the app, warm (the
  model cached); the target is the app cold within 10% of the CLI;
- export: wall time of a q4_k_m export from the app (submit to result) against the same CLI
  command on an identical run, the median of 3 rounds in alternating order (target within 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRPO_BOX_LOCK_DIR", tempfile.mkdtemp(prefix="grpo-box-bench-lock-"))
TINY = {"grpo.num_generations": 4, "grpo.per_device_train_batch_size": 4, "grpo.max_completion_length": 16,
        "output.save_steps": 1, "data.size": 40, "data.eval_size": 4, "lora.r": 4, "lora.alpha": 8}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(runs: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs), "--no-browser"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
            return proc, url, time.perf_counter() - began
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the app exited during start-up")
            time.sleep(0.05)


def fake_run(root: Path, lines: int = 5000, groups: int = 500):
    from grpo_box.presets import resolve_config
    from grpo_box.runs import METRICS, SAMPLES, create_run

    run = create_run(resolve_config("cpu", overrides=[f"output.runs_dir={root}", "output.run_name=big"]))
    rng = random.Random(0)
    with run.file(METRICS).open("w") as fh:
        for step in range(1, lines + 1):
            record = {"step": step, "reward": rng.random(), "reward_std": rng.random(), "frac_reward_zero_std": 0.25,
                      "rewards/xml_count/mean": rng.random(), "rewards/think_format/mean": rng.random(),
                      "rewards/correctness/mean": rng.random(), "completions/mean_length": 40.0,
                      "completions/min_length": 10.0, "completions/max_length": 64.0,
                      "completions/clipped_ratio": 0.1, "loss": 0.01, "grad_norm": 0.5, "learning_rate": 5e-5,
                      "kl": 0.0, "wall_time": step * 20.0, "step_seconds": 20.0, "ram_peak_gb": 3.1}
            fh.write(json.dumps(record) + "\n")
    with run.file(SAMPLES).open("w") as fh:
        for i in range(groups):
            fh.write(json.dumps({"step": i * 10 + 1, "prompt": "What is 3 + 4?" * 3,
                                 "completions": ["<think>3 plus 4</think><answer>7</answer>"] * 4,
                                 "rewards": {"xml_count": [0.5] * 4, "correctness": [1.0] * 4},
                                 "advantages": [0.0] * 4}) + "\n")
    run.set_status("finished", step=lines, max_steps=lines)
    return run


def bench_tick(root: Path) -> dict[str, float]:
    from grpo_box.runs import METRICS
    from grpo_box.ui import train_tab, watch
    from grpo_box.ui.state import UIState

    run = fake_run(root)
    state = UIState("cpu")
    path = str(run.path)

    def tick(seen):
        began = time.perf_counter()
        out = train_tab._tick(path, seen, state)
        return out[0], (time.perf_counter() - began) * 1000

    seen, _ = tick(watch.Seen())  # a fresh page: clears the plots
    seen, full = tick(seen)  # draws everything
    with run.file(METRICS).open("a") as fh:
        fh.write(json.dumps({"step": 5001, "reward": 0.5, "wall_time": 1e5, "step_seconds": 20.0}) + "\n")
    seen, one_new = tick(seen)
    idle = statistics.median(tick(seen)[1] for _ in range(20))
    return {"full draw ms": full, "one new line ms": one_new, "idle ms": idle}


def bench_reattach(root: Path) -> float:
    """A stand-in worker holds the locks of a run; a fresh process reattaches and polls it."""
    run = fake_run(root / "reattach")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from grpo_box import locks; "
        f"locks.acquire_machine(Path({str(run.path)!r})); locks.acquire_run(Path({str(run.path)!r})); "
        "print('held', flush=True); time.sleep(600)")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        code = ("import time; t = time.perf_counter(); from grpo_box.ui import watch; p = watch.reattach(); "
                "u = watch.poll(p); assert u[0].alive and len(u[1]) == 5000; print(time.perf_counter() - t)")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        holder.kill()


def step_times(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step_seconds"] for line in lines][1:]


def bench_training(root: Path, steps: int) -> tuple[float, float]:
    sets = sum((["--set", f"{k}={v}"] for k, v in {**TINY, "grpo.max_steps": steps}.items()), [])
    cli_root = root / "cli"
    subprocess.run([sys.executable, "-m", "grpo_box", "train", "--preset", "cpu", *sets, "--set",
                    f"output.runs_dir={cli_root}"], cwd=ROOT, check=True, capture_output=True)
    cli = statistics.mean(step_times(next(cli_root.iterdir())))
    app_root = root / "app"
    proc, url, _ = start_app(app_root)
    try:
        from gradio_client import Client

        page = Client(url, verbose=False)
        page.predict("cpu", api_name="/select_preset")
        page.predict(json.dumps({**TINY, "grpo.max_steps": steps}), api_name="/set_options")
        page.predict(False, api_name="/train_start")
        from grpo_box.ui.train_tab import TICK_SECONDS

        while "finished" not in (page.predict(api_name="/train_poll")[0] or ""):
            time.sleep(TICK_SECONDS)  # as often as an open Train tab's timer
    finally:
        proc.kill()
    app = statistics.mean(step_times(next(app_root.iterdir())))
    return cli, app


CHAT_PROMPT = "What is 2 + 2?"


def lora_run(root: Path, name: str):
    """A run whose adapter is a random LoRA on the bundled model (the tests' helper: no training)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_random_lora

    from grpo_box.models import ensure_bundled_model
    from grpo_box.presets import resolve_config
    from grpo_box.runs import create_run

    run = create_run(resolve_config("cpu", overrides=[f"output.runs_dir={root}", f"output.run_name={name}"]))
    make_random_lora(ensure_bundled_model(), run.adapter_dir)
    return run


def cli_first_token(run_dir: Path) -> float:
    """Seconds from starting `python -m grpo_box chat --prompt` to its first streamed text on stdout."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "grpo_box", "chat", str(run_dir), "--prompt", CHAT_PROMPT,
                             "--temperature", "0", "--max-tokens", "32"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = None
    while first is None:
        byte = proc.stdout.read(1)
        if not byte:
            break
        if not byte.isspace():
            first = time.perf_counter() - began
    proc.stdout.read()
    proc.wait()
    if first is None:
        raise SystemExit("the CLI chat printed nothing")
    return first


def app_first_token(url: str, run_name: str) -> float:
    """Seconds from sending a message in the Chat tab to the first update carrying reply text."""
    from gradio_client import Client

    page = Client(url, verbose=False)
    began = time.perf_counter()
    job = page.submit(run_name, "trained", None, 0.0, 1.0, 32, "wait", CHAT_PROMPT, [], [], api_name="/chat_send")
    while not job.done() or len(job.outputs()) > 0:
        for update in job.outputs():
            bot = update[0] or []
            if bot and bot[-1].get("role") == "assistant" and any(
                    (part.get("text") or "").strip() for part in bot[-1]["content"]):
                elapsed = time.perf_counter() - began
                job.result()
                return elapsed
        if job.done():
            break
        time.sleep(0.005)
    raise SystemExit(f"the app's chat streamed no text: {job.result()}")


def bench_chat(root: Path) -> dict[str, float]:
    run = lora_run(root, "chat")
    cli = statistics.median(cli_first_token(run.path) for _ in range(2))
    proc, url, _ = start_app(root)
    try:
        cold = app_first_token(url, run.path.name)
        warm = statistics.median(app_first_token(url, run.path.name) for _ in range(3))
    finally:
        proc.kill()
    return {"cli": cli, "app cold": cold, "app warm": warm}


def bench_export(root: Path, rounds: int = 3) -> tuple[float, float]:
    """Median seconds of a q4_k_m export by the CLI and by the app, over `rounds` rounds. Each round
    exports fresh runs (an export reuses a merge that is still current) and the order alternates, so
    a warm page cache or a busy moment favours neither side."""
    proc, url, _ = start_app(root)
    cli_times: list[float] = []
    app_times: list[float] = []
    try:
        from gradio_client import Client

        page = Client(url, verbose=False, download_files=False)
        for i in range(rounds):
            sides = [("cli", cli_times), ("app", app_times)]
            for side, times in (sides if i % 2 == 0 else sides[::-1]):
                run = lora_run(root, f"export-{side}-{i}")
                times.append(_export_seconds(side, run, page))
    finally:
        proc.kill()
    return statistics.median(cli_times), statistics.median(app_times)


def _export_seconds(side: str, run: Any, page: Any) -> float:
    began = time.perf_counter()
    if side == "cli":
        subprocess.run([sys.executable, "-m", "grpo_box", "export", str(run.path), "--quant", "q4_k_m"], cwd=ROOT,
                       check=True, capture_output=True)
        return time.perf_counter() - began
    out = page.predict(run.path.name, ["q4_k_m"], False, False, api_name="/export_run")
    seconds = time.perf_counter() - began
    if "passed its checks" not in str(out[0]):
        raise SystemExit(f"the app's export did not pass: {out[0]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip-training", action="store_true", help="no training-speed comparison")
    parser.add_argument("--skip-chat", action="store_true", help="no chat latency comparison")
    parser.add_argument("--skip-export", action="store_true", help="no export time comparison")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="grpo-box-bench-ui-"))
    proc, _, start = start_app(root / "empty")
    proc.kill()
    print(f"start: {start:.2f} s to the first page (target < 10 s)")
    for name, ms in bench_tick(root / "tick").items():
        print(f"tick, 5,000 metric lines + 500 groups, {name}: {ms:.1f} (target < 100 ms)")
    print(f"reattach: {bench_reattach(root):.2f} s from a fresh process to the first poll of a running job")
    if not args.skip_training:
        cli, app = bench_training(root, args.steps)
        print(f"training step: CLI alone {cli:.2f} s, app open and polling {app:.2f} s, ratio {app / cli:.3f} "
              f"(target < 1.03)")
    if not args.skip_chat:
        ttft = bench_chat(root / "chat")
        print(f"chat, time to first token: CLI {ttft['cli']:.2f} s, app cold {ttft['app cold']:.2f} s "
              f"(ratio {ttft['app cold'] / ttft['cli']:.3f}, target < 1.10), app warm {ttft['app warm']:.2f} s")
    if not args.skip_export:
        cli, app = bench_export(root / "export")
        print(f"export q4_k_m (median of 3, alternating): CLI {cli:.1f} s, app {app:.1f} s, ratio {app / cli:.3f} "
              "(target < 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
