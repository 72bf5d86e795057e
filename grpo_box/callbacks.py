"""Trainer callbacks: run-directory files, and a readable progress line on the terminal.

Per optimizer step it appends every metric TRL logged (reward, reward_std, rewards/<fn>/mean,
frac_reward_zero_std, kl, completion lengths, loss, …) plus wall time, RAM and VRAM (torch's
peak since the previous step, and NVML's whole-card reading) to metrics.jsonl; every
`sample_every` steps it writes the last batch's prompts, completions and per-function rewards
(TRL keeps them in `trainer._logs`) to samples.jsonl; it keeps status.json current and turns a
STOP file into "save a checkpoint and stop". Before each checkpoint it checks the free disk space
against the size of the last checkpoint; when it runs short the run stops cleanly, without writing
a checkpoint that could not complete, and says how much room is needed.

`StepSummaryProgress` keeps transformers' tqdm bar but replaces the raw dict of 30 metrics it
prints per step with one line of what GRPO users watch: reward ± std, each reward function,
completion length and clipping, the share of groups with no signal, and seconds per step.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from .hardware import GIB, reset_peak_vram, vram_snapshot
from .runs import METRICS, SAMPLES, RunDir, free_bytes

# Keys the Trainer adds at the end of training; they are not per-step metrics.
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}


def ram_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


class RunFilesCallback(TrainerCallback):
    def __init__(self, run: RunDir, sample_every: int, max_steps: int, reply_prefill: str = "",
                 masks_truncated: bool = False):
        self.run = run
        self.masks_truncated = masks_truncated  # grpo.mask_truncated_completions: an all-cut step updates nothing
        self.reply_prefill = reply_prefill  # the prompt's end, which TRL's logged completions leave out
        self.sample_every = sample_every
        self.max_steps = max_steps
        self.trainer: Any = None  # set after the trainer exists: samples come from trainer._logs
        self.phase = "setup"
        self.current_step = 0  # the step being computed (global_step + 1 until it ends)
        self._t0 = time.time()
        self._last_step_at = time.time()
        self.disk_problem: str | None = None  # set when the disk ran short before a checkpoint

    def on_train_begin(self, args, state, control, **kwargs):
        # wall_time counts on from the history a resume keeps (already trimmed to its checkpoint)
        earlier = self.run.metrics() if state.global_step else []
        self._last_step_at = time.time()
        self._t0 = self._last_step_at - float(earlier[-1].get("wall_time", 0.0) if earlier else 0.0)
        reset_peak_vram()  # the first step's peak must not be the model load's
        self.run.set_status("running", step=state.global_step, max_steps=self.max_steps, phase="training", error=None)

    def on_step_begin(self, args, state, control, **kwargs):
        self.current_step = state.global_step + 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.run.stop_requested():
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            self._check_disk(state.global_step, control)
        self.run.set_status("running", step=state.global_step, max_steps=self.max_steps)

    def _check_disk(self, step: int, control) -> None:
        needed = checkpoint_bytes(self.run)
        free = free_bytes(self.run.path)
        if free >= needed:
            return
        control.should_save = False
        control.should_training_stop = True
        last = self.run.last_checkpoint()
        self.disk_problem = (
            f"the disk is nearly full ({free / 2**20:.0f} MB free; a checkpoint needs about {needed / 2**20:.0f} MB): "
            f"stopped at step {step} without saving it. Free some space, then resume "
            + (f"(it continues from {last.name})" if last else "(it starts again: no checkpoint yet)"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if not logs or set(logs) <= _SUMMARY_KEYS | {"epoch"}:
            return
        now = time.time()
        record = {"step": state.global_step, **logs, "wall_time": round(now - self._t0, 3),
                  "step_seconds": round(now - self._last_step_at, 3), "ram_peak_gb": round(ram_peak_gb(), 3)}
        record.update(vram_snapshot() or {})
        if self.masks_truncated and float(logs.get("completions/clipped_ratio", 0.0)) >= 1.0:
            record["warning"] = ALL_MASKED
            print(f"step {state.global_step}: {ALL_MASKED}", file=sys.stderr, flush=True)
        reset_peak_vram()
        self._last_step_at = now
        self.run.append(METRICS, record)
        if state.global_step % self.sample_every == 0 or state.global_step == 1:
            self._write_samples(state.global_step)

    def _write_samples(self, step: int) -> None:
        logs = getattr(self.trainer, "_logs", None)
        if not logs or not logs.get("prompt"):
            return
        groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"completions": [], "rewards": defaultdict(list)})
        order: list[str] = []
        for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"])):
            key = _text(prompt, roles=True)
            if key not in groups:
                order.append(key)
            group = groups[key]
            group["completions"].append(self.reply_prefill + _text(completion))
            for name, values in logs["rewards"].items():
                group["rewards"][name].append(_num(list(values)[i]))
            group.setdefault("advantages", []).append(_num(list(logs["advantages"])[i]))
        for key in order:
            group = groups[key]
            self.run.append(SAMPLES, {"step": step, "prompt": key, "completions": group["completions"],
                                      "rewards": dict(group["rewards"]), "advantages": group["advantages"]})


MIN_CHECKPOINT_BYTES = 64 * 2**20
ALL_MASKED = ("every completion hit grpo.max_completion_length and grpo.mask_truncated_completions left them all "
              "out of the loss: this step updated nothing; raise max_completion_length or turn the mask off")


def checkpoint_bytes(run: RunDir) -> int:
    """Room one more checkpoint needs: 1.5 × the last one's size (64 MB before the first)."""
    last = run.last_checkpoint()
    if last is None:
        return MIN_CHECKPOINT_BYTES
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file())
    return max(MIN_CHECKPOINT_BYTES, int(size * 1.5))


class StepSummaryProgress(ProgressCallback):
    """transformers' progress bar, writing `step_summary` lines instead of raw log dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(step_summary(state.global_step, state.max_steps, logs))


def step_summary(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """One terminal line for one logged step (or the end-of-training summary).

    >>> step_summary(2, 60, {"reward": 0.25, "reward_std": 0.7071, "rewards/correctness/mean": 0.125,
    ...     "completions/mean_length": 51.0, "completions/clipped_ratio": 0.625, "frac_reward_zero_std": 0.5,
    ...     "step_time": 23.87})
    'step 2/60 | reward 0.250 ± 0.707 | correctness 0.125 | length 51 (62% cut) | no-signal groups 50% | 23.9 s'
    """
    if "train_runtime" in logs:
        return f"training done: {step} steps in {float(logs['train_runtime']):.0f} s"
    parts = [f"step {step}/{max_steps}"]
    if "reward" in logs:
        parts.append(f"reward {float(logs['reward']):.3f} ± {float(logs.get('reward_std', 0.0)):.3f}")
    per_function = [f"{key[len('rewards/'):-len('/mean')]} {float(value):.3f}" for key, value in logs.items()
                    if key.startswith("rewards/") and key.endswith("/mean")]
    if per_function:
        parts.append("  ".join(per_function))
    if "completions/mean_length" in logs:
        parts.append(f"length {float(logs['completions/mean_length']):.0f}"
                     f" ({float(logs.get('completions/clipped_ratio', 0.0)):.0%} cut)")
    if "frac_reward_zero_std" in logs:
        parts.append(f"no-signal groups {float(logs['frac_reward_zero_std']):.0%}")
    if "step_time" in logs:
        parts.append(f"{float(logs['step_time']):.1f} s")
    return " | ".join(parts)


def _text(value: Any, roles: bool = False) -> str:
    """A prompt or completion as text; `roles` names every message's role (a prompt's one-shot reply too)."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" if roles or m.get("role") != "assistant"
                         else str(m.get("content")) for m in value if isinstance(m, dict))
    return str(value)


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if value != value else value  # NaN → None (the reward was skipped)
