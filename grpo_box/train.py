"""GRPO training: data → model → rewards → trainer → train → save, writing everything to a run dir.

`run_training(run)` is what the training child process (job.py) and the CLI call. It reads the
run's config.yaml, trains with TRL's GRPOTrainer on the Unsloth-loaded model (see modeling.py),
writes metrics/samples/status through RunFilesCallback, saves checkpoints, and saves the final
LoRA adapter in `adapter/`. A STOP file (or SIGTERM) saves a checkpoint and stops (one that comes
while the model loads ends the run before its first step); `resume=True` continues from the last
checkpoint. A CUDA out-of-memory error is caught: the run is marked with the step and phase (rollout
or training) and a concrete suggestion from `memory`, checkpoints are kept, and with `auto_fit` the
run retries once with the next smaller setting, recording that it did. The error counts as out of
memory also when a library wraps it (a reward function's RewardError has it as its cause). Before
the first step, loading the model (vLLM's start-up included, whose "no memory for the cache blocks"
is a ValueError) and the base-model evaluation are guarded the same way: the run is marked "out of
memory at start-up (…)" with what to lower. With `auto_fit`, a start-up OOM while vLLM loads retries
once with vLLM's share moved one step: down when the share did not fit in the free memory, up when it
held the weights but no KV cache.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .config import RunConfig
from .validation import validate
from . import locks
from .errors import UserError
from .runs import CHECKPOINTS, CONFIG, RETRYING, RunDir, create_run, write_text_atomic

if TYPE_CHECKING:  # the real import waits until unsloth is imported
    from .callbacks import RunFilesCallback


class TrainingOOM(RuntimeError):
    """A CUDA out-of-memory error, with where it happened."""

    def __init__(self, step: int, phase: str, detail: str):
        super().__init__(f"out of memory at step {step} during {phase}")
        self.step, self.phase, self.detail = step, phase, detail


class StartupOOM(RuntimeError):
    """Out of memory before the first step: loading the model / vLLM, or the base-model evaluation.
    `no_kv_cache`: vLLM's share held the weights but no KV cache (too small, not too large)."""

    def __init__(self, what: str, hint: str, detail: str, no_kv_cache: bool = False):
        super().__init__(f"out of memory at start-up ({what}); try: {hint}")
        self.what, self.detail, self.no_kv_cache = what, detail, no_kv_cache


LOADING = "loading model / vLLM cache"  # the StartupOOM.what of the model load, where vLLM starts
_SHARE_STEP, _SHARE_RANGE = 0.05, (0.2, 0.95)  # an auto-fit move of vLLM's share, and how far it may go


# vLLM's start-up errors when its share has no room for a KV cache (ValueErrors, not CUDA OOMs)
_VLLM_NO_CACHE = ("No available memory for the cache blocks", "larger than the available KV cache memory")
# Out-of-memory errors on the GPU path that are not torch.OutOfMemoryError, matched in lower case:
# - torch.AcceleratorError "CUDA error: out of memory" (c10_cuda_check_implementation, a CUDA call
#   outside the caching allocator) and vLLM's cumem allocator waking the standby KV cache up,
#   RuntimeError "CUDA Error: out of memory at …/cumem_allocator.cpp:N" (csrc/cumem_allocator.cpp);
# - cuBLAS failing to allocate its workspace (RuntimeError "CUBLAS_STATUS_ALLOC_FAILED");
# - vLLM's start-up check, ValueError "Free memory on device … is less than desired GPU memory
#   utilization" (re-raised by unsloth_zoo as RuntimeError(str) after its retries);
# - unsloth_zoo's standby wrapper, MemoryError "Unsloth: Your GPU ran out of memory loading vLLM …";
# - a CUDA driver API call failing (torch's C10_CUDA_DRIVER_CHECK, e.g. cuMemCreate/cuMemMap of
#   expandable segments), RuntimeError "CUDA driver error: out of memory".
_GPU_OOM_TEXT = ("cuda error: out of memory", "cublas_status_alloc_failed",
                 "is less than desired gpu memory utilization", "gpu ran out of memory",
                 "cuda driver error: out of memory")
# vLLM's memory-profiling race (another process freed memory meanwhile) quotes free memory too: not an OOM
_NOT_OOM_TEXT = ("error in memory profiling",)


def _is_oom(exc: BaseException) -> bool:
    """Whether `exc` itself is an out-of-memory error (see _GPU_OOM_TEXT for the ones torch does not type)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, (RuntimeError, ValueError, MemoryError)):
        return False
    text = str(exc).lower()
    if any(marker in text for marker in _NOT_OOM_TEXT):
        return False
    return _no_kv_cache(exc) or any(marker in text for marker in _GPU_OOM_TEXT)


def _no_kv_cache(exc: BaseException) -> bool:
    """vLLM's share holds the weights but no KV cache: the share is too small (raise it), not too large."""
    return isinstance(exc, (RuntimeError, ValueError)) and any(marker in str(exc) for marker in _VLLM_NO_CACHE)


def _oom_cause(exc: BaseException | None) -> BaseException | None:
    """The out-of-memory error behind `exc`: itself or one it wraps (__cause__/__context__), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_oom(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def start_run(config: RunConfig) -> RunDir:
    """Validate a config and create its run directory (without training). A model or data file that
    certainly cannot be loaded is refused here, before a run folder exists for it."""
    validate(config)
    from .data import DataError, local_source_path
    from .models import check_model_source

    check_model_source(config.model.name)
    source = local_source_path(config.data.source)
    if source is not None and not source.exists():
        raise DataError(f"data.source={config.data.source!r}: no such file (relative paths start from the folder "
                        "you run from); give the path of a .jsonl, .csv or .parquet file")
    return create_run(resolve_loss(config))


def grpo_args(config: RunConfig, run: RunDir, weights: list[float], cuda: bool,
              model_dtype: Any = None) -> dict[str, Any]:
    """Keyword arguments for TRL's GRPOConfig (a pure function so tests can check them).

    Precision: on the CPU neither bf16 nor fp16. On the GPU the flags must match the dtype Unsloth
    loaded the model in, or its trainer raises a TypeError ("Model is in float16 precision but you
    want to use bfloat16", unsloth/models/rl.py); Unsloth loads float16 below compute capability 8
    although torch.cuda.is_bf16_supported() says True there (emulation). With `model_dtype` (the
    loaded model's, a torch.dtype or its name) they are set from it; without it neither is passed
    and Unsloth's GRPOConfig (both False by default) lets its trainer pick from the model.
    """
    g = config.grpo
    args: dict[str, Any] = {
        "output_dir": str(run.file(CHECKPOINTS)),
        "max_steps": g.max_steps,
        "learning_rate": g.learning_rate,
        "per_device_train_batch_size": g.per_device_train_batch_size,
        "gradient_accumulation_steps": g.gradient_accumulation_steps,
        "num_generations": g.num_generations,
        "max_completion_length": g.max_completion_length,
        "temperature": g.temperature,
        "beta": g.beta,
        "loss_type": g.loss_type,
        "epsilon": g.epsilon,
        **loss_settings(config),
        "optim": g.optim if cuda or "8bit" not in g.optim else "adamw_torch",
        "weight_decay": g.weight_decay,
        "warmup_steps": g.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        "lr_scheduler_type": g.lr_scheduler_type,
        "max_grad_norm": g.max_grad_norm,
        "seed": g.seed,
        "reward_weights": weights,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": config.output.save_steps,
        "save_total_limit": config.output.keep_checkpoints,
        "report_to": "none",
        "remove_unused_columns": False,
        "use_cpu": not cuda,
    }
    if not cuda:
        args.update(bf16=False, fp16=False)
    elif model_dtype is not None:
        args.update(precision_flags(model_dtype))
    # No use_vllm here: Unsloth's GRPOTrainer turns it on (colocated, reusing model.vllm_engine)
    # when the model has an engine. Forcing it where Unsloth declined fast_inference (an old GPU)
    # would make TRL start a second vLLM of its own.
    return args


def loss_settings(config: RunConfig) -> dict[str, Any]:
    """The GRPO objective's settings that Unsloth would otherwise choose behind our back, passed
    explicitly so the GPU (Unsloth's GRPOConfig) and the CPU (stock TRL) train the same objective.

    unsloth/models/rl.py, for an explicit loss_type: "dapo" sets mask_truncated_completions=True
    (a step whose completions are all cut off then updates nothing, common early with long <think>
    traces) and epsilon_high=0.28, where TRL keeps False and epsilon; "dr_grpo" forces
    scale_rewards=False; vllm_importance_sampling_correction defaults to False (TRL: True). Here
    each is a config field (grpo.epsilon_high, grpo.scale_rewards, grpo.mask_truncated_completions)
    whose empty value resolves as `resolve_loss` says; vLLM's importance-sampling correction stays
    off (Unsloth's tested default; no effect without vLLM).
    """
    g = resolve_loss(config).grpo
    return {
        "mask_truncated_completions": g.mask_truncated_completions,
        "epsilon_high": g.epsilon_high,
        "scale_rewards": g.scale_rewards,
        "vllm_importance_sampling_correction": False,
    }


def resolve_loss(config: RunConfig) -> RunConfig:
    """`config` with the empty loss settings filled in: symmetric clipping (epsilon_high = epsilon),
    and rewards scaled by the group's std except for dr_grpo (whose point is not to). A run writes
    these into its config.yaml, so it records what the trainer used."""
    g = config.grpo
    if g.epsilon_high is not None and g.scale_rewards is not None:
        return config
    resolved = config.copy()
    resolved.grpo.epsilon_high = g.epsilon if g.epsilon_high is None else g.epsilon_high
    resolved.grpo.scale_rewards = g.scale_rewards or ("none" if g.loss_type == "dr_grpo" else "group")
    return resolved


def precision_flags(model_dtype: Any) -> dict[str, bool]:
    """bf16/fp16 for a model loaded in `model_dtype` (torch.float16, "bfloat16", …): autocast in the
    model's own half precision, none for float32."""
    name = str(model_dtype).removeprefix("torch.").lower()
    return {"bf16": name in ("bfloat16", "bf16"), "fp16": name in ("float16", "fp16", "half")}


def run_training(run: RunDir, resume: bool = False, extra_callbacks: list | None = None,
                 parent_pid: int | None = None) -> RunDir:
    """Train the run in this process; on return status.json says finished, stopped or failed, or
    `retrying`: it ran out of memory with `auto_fit` on and a smaller config is saved. A retry
    must run in a fresh process (`job.Monitor`, `job.run_attached`): only the exit of the
    process that held it reliably returns VRAM, and a second vLLM engine would not fit beside
    the first. The machine and run locks are held throughout (a second worker is refused before
    it touches the run); with `parent_pid`, the run stops at the next step if that parent dies."""
    with locks.held_for_worker(run.path):
        if resume:
            run.check_resumable()
        config = run.config()
        run.clear_stop()  # left by an earlier stop; one asked for from here on counts, even while loading
        run.set_status(run.status().get("state", "created"), pid=os.getpid(), pid_started=_process_start_time())
        with _Watchdog(run, parent_pid):
            _run_guarded(run, config, resume, extra_callbacks)
    return run


def _run_guarded(run: RunDir, config: RunConfig, resume: bool, extra_callbacks: list | None) -> None:
    try:
        with _stop_on_sigterm(run):
            _train_once(run, config, resume, extra_callbacks)
    except TrainingOOM as oom:
        _handle_oom(run, config, oom)
    except StartupOOM as oom:
        _handle_startup_oom(run, config, oom)
    except UserError as exc:  # bad data, a reward that failed, a full disk: the message says what to do
        run.set_status("failed", error=str(exc), traceback=traceback.format_exc())
        raise
    except BaseException as exc:  # the run must end in a readable state, whatever failed
        run.set_status("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise


def _process_start_time() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: the locks still tell liveness
        return None


class _Watchdog:
    """A thread in the worker that (1) asks for a stop when the parent that started the run attached
    to a terminal has died, so no orphan trains on; (2) ends a run that does not stop within a grace
    period after a stop was requested (stuck in user code or a hung generation): the status says so
    and the run resumes from its last checkpoint. The grace starts again whenever the step or the
    phase changes (a stop asked while loading counts from when training begins) and is suspended
    while the adapter is saved. A stop during a finished run's final evaluation ends the evaluation
    at once: the run stays finished."""

    LOADING_GRACE = 600.0  # a vLLM start-up can take minutes
    MIN_GRACE = 120.0

    def __init__(self, run: RunDir, parent_pid: int | None):
        self.run, self.parent_pid = run, parent_pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="grpo-box-watchdog", daemon=True)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()

    def _watch(self) -> None:
        asked_at: float | None = None
        seen: tuple[Any, Any] | None = None  # (step, phase) when the grace last started
        while not self._done.wait(1.0):
            if self.parent_pid and os.getppid() != self.parent_pid and not self.run.stop_requested():
                print("the terminal that started this run is gone: stopping after this step", file=sys.stderr)
                self.run.request_stop()
            if not self.run.stop_requested():
                asked_at = None
                continue
            status = self.run.status()
            if _in_final_evaluation(status) and not self._done.is_set():
                self._end_evaluation()
            mark = (status.get("step"), status.get("phase"))
            if asked_at is None or mark != seen or mark[1] == "saving":
                asked_at, seen = time.time(), mark
                continue
            if time.time() - asked_at > self._grace(status) and not self._done.is_set():
                self._give_up(status)

    def _grace(self, status: dict[str, Any]) -> float:
        if status.get("phase") == "loading":
            return self.LOADING_GRACE
        try:
            last = self.run.metrics()[-1].get("step_seconds", 0.0)
        except Exception:
            last = 0.0
        return max(self.MIN_GRACE, 3 * float(last or 0.0))

    def _end_evaluation(self) -> None:
        """The run finished and its adapter is saved; only the final evaluation is left to cut short."""
        message = (f"the trained model's evaluation was stopped before it ended; training is saved: run "
                   f"`python -m grpo_box eval {self.run.path}` to evaluate it")
        print(message, file=sys.stderr, flush=True)
        self.run.set_status("finished", evaluation_error=message)
        os._exit(0)

    def _give_up(self, status: dict[str, Any]) -> None:
        if _in_final_evaluation(self.run.status()):  # it finished meanwhile: never turn that into stopped
            self._end_evaluation()
        last = self.run.last_checkpoint()
        where = f"resume continues from {last.name}" if last else "resume starts it again"
        stuck = ("loading the model or the base-model evaluation never ended" if status.get("phase") == "loading"
                 else f"step {int(status.get('step') or 0) + 1} never ended: a reward function or generation that "
                      "does not return?")
        message = f"did not stop within {self._grace(status):.0f} s of the stop request ({stuck}); ended it; {where}"
        print(message, file=sys.stderr, flush=True)
        self.run.set_status("stopped", error=message)
        os._exit(3)


def _in_final_evaluation(status: dict[str, Any]) -> bool:
    return status.get("state") == "finished" and status.get("phase") == "done"


def _handle_oom(run: RunDir, config: RunConfig, oom: TrainingOOM) -> None:
    """Mark the run out of memory with a concrete hint; with auto_fit, save the smaller config once."""
    smaller = _smaller_setting(config, oom.phase)
    hint = f"try: {smaller[1]}" if smaller else "lower grpo.num_generations or grpo.max_completion_length"
    message = f"{oom}; {hint}"
    status = run.status()
    run.set_status("failed", error=message, oom={"step": oom.step, "phase": oom.phase, "detail": oom.detail[:500]})
    if not config.auto_fit or status.get("auto_fit") or smaller is None:
        return
    _save_retry(run, config, *smaller, after_step=oom.step, phase=oom.phase)


def _handle_startup_oom(run: RunDir, config: RunConfig, oom: StartupOOM) -> None:
    """Mark the run out of memory at start-up; with auto_fit, save the config with vLLM's share moved, once."""
    status = run.status()
    run.set_status("failed", error=str(oom), oom={"step": 0, "phase": "start-up", "detail": oom.detail[:500]})
    moved = _moved_share(config, oom) if config.auto_fit and not status.get("auto_fit") else None
    if moved is not None:
        _save_retry(run, config, *moved, after_step=status.get("step") or 0, phase="start-up")


def _save_retry(run: RunDir, config: RunConfig, new_config: RunConfig, change: str, *, after_step: int,
                phase: str) -> None:
    """Save the auto-fit config (the user's beside it) and mark the run for `job.Monitor` to resume."""
    write_text_atomic(run.file("config.before-autofit.yaml"), config.to_yaml())
    write_text_atomic(run.file(CONFIG), new_config.to_yaml())
    run.set_status(RETRYING, error=None, auto_fit={"after_step": after_step, "phase": phase, "change": change})


def _moved_share(config: RunConfig, oom: StartupOOM) -> tuple[RunConfig, str] | None:
    """vLLM's share one step the way `memory.startup_oom_hint` says (up for no KV cache, else down),
    with what changed; None when vLLM did not start here or the share is at its bound. Under standby
    the share is Unsloth's target for the card, taken over with the override (None on an unknown card)."""
    from .hardware import detect_gpu
    from .memory import Change, describe_changes, standby_sets_share, vllm_utilization

    m = config.model
    if oom.what != LOADING or not m.fast_inference:
        return None
    standby = standby_sets_share(config)
    try:
        gpu = detect_gpu() if standby else None
    except Exception:  # a driver that fails after the OOM: the OOM is still reported, without a retry
        gpu = None
    if standby and gpu is None:
        return None
    now = vllm_utilization(config, gpu.vram_gb if gpu else None)
    new = round(now + (_SHARE_STEP if oom.no_kv_cache else -_SHARE_STEP), 2)
    if not _SHARE_RANGE[0] <= new <= _SHARE_RANGE[1]:
        return None
    out = config.copy()
    out.model.gpu_memory_utilization = new
    changes = [Change("model.gpu_memory_utilization", now, new)]
    if standby:
        out.model.vllm_standby_util_override = True
        changes.insert(0, Change("model.vllm_standby_util_override", False, True))
    return out, describe_changes(changes)


def _smaller_setting(config: RunConfig, oom_phase: str) -> tuple[RunConfig, str] | None:
    """memory.smaller_setting for this machine's card, or None when no estimate can be made."""
    from .hardware import detect_gpu
    from .memory import smaller_setting

    try:
        gpu = detect_gpu()
        phase = {"rollout": "generation", "training": "training"}.get(oom_phase)
        return smaller_setting(config, vram_gb=gpu.vram_gb if gpu else None, phase=phase)
    except Exception:  # e.g. a model whose shape is unknown offline: the OOM must still be reported
        return None


@contextlib.contextmanager
def _on_oom(as_error: Callable[[BaseException], Exception]) -> Iterator[None]:
    """Re-raise an out-of-memory error (or one wrapping it, see `_oom_cause`) as `as_error(oom)`."""
    try:
        yield
    except Exception as exc:
        oom = _oom_cause(exc)
        if oom is None:
            raise
        raise as_error(oom) from exc


def _startup_oom(config: RunConfig, what: str) -> contextlib.AbstractContextManager[None]:
    """Turn an out-of-memory error before training (see module docstring) into StartupOOM."""

    def as_error(oom: BaseException) -> StartupOOM:
        from .memory import startup_oom_hint

        hint = startup_oom_hint(config, vllm_cache=_no_kv_cache(oom))
        return StartupOOM(what, hint, f"{type(oom).__name__}: {oom}", no_kv_cache=_no_kv_cache(oom))

    return _on_oom(as_error)


def _train_once(run: RunDir, config: RunConfig, resume: bool, extra_callbacks: list | None) -> None:
    # One function on purpose: it reads as the list of steps of a run.
    checkpoint = _begin(run, config, resume)  # the history first: a broken one fails before the model loads
    from .modeling import has_cuda, import_unsloth

    import_unsloth(config)  # before trl / transformers / peft
    from trl import GRPOConfig, GRPOTrainer

    from transformers.trainer_callback import ProgressCallback

    from .callbacks import RunFilesCallback, StepSummaryProgress
    from .data import check_prompt_lengths, load_rows
    from .modeling import load_policy
    from .chat_format import apply_run_format
    from .prompts import reply_prefill
    from .rewards import build_rubric

    train_rows, _held_out = load_rows(config)
    _check_enough_rows(config, len(train_rows))
    reward_funcs, weights = build_rubric(config.rewards, config.reward_file, template=config.data.template,
                                         timeout=config.reward_timeout)
    with _startup_oom(config, LOADING):
        model, tokenizer = load_policy(config)
    apply_run_format(tokenizer, config.data)  # saved with every checkpoint and the adapter, so it travels on
    prefill = reply_prefill(config.data)
    for func in reward_funcs:
        func.reply_prefill = prefill
    check_prompt_lengths(train_rows, tokenizer, config.grpo.max_prompt_length)
    if config.evaluate and _base_unscored(run, checkpoint):
        with _startup_oom(config, "base-model evaluation"):
            _evaluate(run, config, model, tokenizer, base=True)
    files = RunFilesCallback(run, config.output.sample_every, config.grpo.max_steps, prefill,
                             masks_truncated=config.grpo.mask_truncated_completions)
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        args=GRPOConfig(**grpo_args(config, run, weights, has_cuda(), model_dtype=getattr(model, "dtype", None))),
        train_dataset=train_rows,
        callbacks=[files, *(extra_callbacks or [])],
    )
    files.trainer = trainer
    if trainer.pop_callback(ProgressCallback) is not None:  # absent with disable_tqdm
        trainer.add_callback(StepSummaryProgress())
    _track_phase(trainer, files)
    if run.stop_requested():  # asked for while loading: end here, before a step that would only be thrown away
        _stop_before_training(run, checkpoint)
        return
    _guarded_train(trainer, files, checkpoint)
    if files.disk_problem:
        run.set_status("stopped", step=trainer.state.global_step, phase="done", error=files.disk_problem)
        return
    if trainer.state.global_step > 0:  # an adapter from 0 steps would pass for a trained one
        _save_adapter(run, trainer, tokenizer)
    stopped = trainer.state.global_step < config.grpo.max_steps
    run.set_status("stopped" if stopped else "finished", step=trainer.state.global_step, phase="done")
    if config.evaluate and not stopped:
        _final_evaluation(run, config, trainer.model, tokenizer)


def _final_evaluation(run: RunDir, config: RunConfig, model: Any, tokenizer: Any) -> None:
    """The trained model's held-out evaluation. The run is already finished and its adapter saved:
    a failure here (out of memory in a large generation, say) is recorded, not a failed run;
    `python -m grpo_box eval RUN` can redo it."""
    try:
        _evaluate(run, config, model, tokenizer, base=False)
    except Exception as exc:
        run.set_status("finished", evaluation_error=f"the trained model's evaluation failed ({type(exc).__name__}: "
                                                   f"{exc}); training is saved: run `python -m grpo_box eval {run.path}`")


def _base_unscored(run: RunDir, checkpoint: str | None) -> bool:
    """Whether a run that starts from step 0 has no base-model score yet: a fresh start, or the
    auto-fit retry of a start-up OOM (a resume with no checkpoint to continue from)."""
    from .evaluate import read_eval

    return checkpoint is None and "base" not in read_eval(run.path)


def _guarded_train(trainer: Any, files: RunFilesCallback, checkpoint: str | None) -> None:
    # the step and phase are read when the error happens
    with _on_oom(lambda oom: TrainingOOM(max(files.current_step, 1), files.phase, str(oom))):
        trainer.train(resume_from_checkpoint=checkpoint)


def _track_phase(trainer: Any, files: RunFilesCallback) -> None:
    """Record whether the trainer is generating (rollout) or stepping (training), for OOM reports."""
    generate = trainer._generate_and_score_completions

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        files.phase = "rollout"
        out = generate(*args, **kwargs)
        files.phase = "training"
        return out

    trainer._generate_and_score_completions = wrapped


def _check_enough_rows(config: RunConfig, rows: int) -> None:
    """At least one step's prompts must remain after the held-out split, or TRL trains 0 steps."""
    g = config.grpo
    per_step = max(1, g.per_device_train_batch_size * g.gradient_accumulation_steps // g.num_generations)
    if rows < per_step:
        from .data import DataError

        raise DataError(
            f"only {rows} training prompt{'s' if rows != 1 else ''} remain after holding out data.eval_size="
            f"{config.data.eval_size}, and one step needs {per_step}: lower data.eval_size, or use more rows")


def _begin(run: RunDir, config: RunConfig, resume: bool) -> str | None:
    """Mark the run loading and return the checkpoint it continues from (None: from step 0).

    A resume settles its history first (`_resume_point`), so a broken metrics.jsonl fails before
    the model loads, and the status keeps the run's step (the checkpoint's) rather than 0: a
    failure before the first step then leaves the step count as it was, and `resume --steps N`
    counts from it."""
    checkpoint = _resume_point(run) if resume else None
    run.repair_tail()
    run.set_status("running", step=_checkpoint_step(checkpoint), max_steps=config.grpo.max_steps, phase="loading",
                   error=None)
    return checkpoint


def _checkpoint_step(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0


def _resume_point(run: RunDir) -> str | None:
    """The last complete checkpoint (None: start over). Metric and sample lines after it are dropped,
    since those steps run again; checkpoint folders a crash cut off are removed."""
    import shutil

    for broken in run.incomplete_checkpoints():
        print(f"removing {broken.name}: it was cut off before it was complete (a crash or a full disk)",
              file=sys.stderr)
        shutil.rmtree(broken, ignore_errors=True)
    checkpoint = str(run.last_checkpoint() or "") or None
    run.truncate_after(_checkpoint_step(checkpoint))
    return checkpoint


class _stop_on_sigterm:
    """While loading and training, SIGTERM asks for a checkpoint-and-stop instead of killing the process."""

    def __init__(self, run: RunDir):
        self.run = run
        self.previous: Any = None

    def __enter__(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGTERM, lambda *_: self.run.request_stop())
        except ValueError:  # not the main thread: the STOP file still works
            self.previous = None

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _stop_before_training(run: RunDir, checkpoint: str | None) -> None:
    where = f"resume continues from {os.path.basename(checkpoint)}" if checkpoint else "resume starts it again"
    run.set_status("stopped", phase="done", error=f"stopped before training began (asked for while the model "
                                                    f"loaded); nothing was lost: {where}")


def _save_adapter(run: RunDir, trainer: Any, tokenizer: Any) -> None:
    """Save the final adapter and the step it was trained to (see `RunDir.adapter_step`). While it
    writes, the phase is "saving": the stop watchdog waits for a slow disk instead of cutting it off."""
    run.set_status("running", phase="saving")
    trainer.model.save_pretrained(str(run.adapter_dir))
    tokenizer.save_pretrained(str(run.adapter_dir))
    run.record_adapter_step(trainer.state.global_step)


def _evaluate(run: RunDir, config: RunConfig, model: Any, tokenizer: Any, base: bool) -> None:
    """Score the held-out split with the policy already in memory (no second copy on the GPU)."""
    from .evaluate import evaluate_run
    from .inference import Generator, VLLMGenerator, has_vllm_engine

    if has_vllm_engine(model):
        generator: Any = VLLMGenerator(model, tokenizer, adapter_dir=None if base else str(run.adapter_dir))
    else:
        generator = Generator(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        evaluate_run(run.path, base=base, trained=not base, generator=generator)
    finally:
        model.train(was_training)
