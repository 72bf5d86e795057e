"""`validate(config)`: the one place a RunConfig is checked, with errors that say what to change.

Per-field types, ranges and fixed choices come generically from the field metadata
(`config.check_fields`); this module adds what needs more than one field (batch divisible by the
group size, prompt + completion within the sequence length, LoRA rank within vLLM's slot) and
what needs the registries (templates, reward names, tag rewards that fit the template). It sits
above `config`, `prompts` and the rewards registry so that none of those import each other in a
circle. Everything here runs before a run directory exists, so a typo never leaves a failed run.
"""

from __future__ import annotations

from pathlib import Path

from .config import BUNDLED_MODEL, USER_PREFIX, ConfigError, RewardSpec, RunConfig, check_fields, check_run_name
from .models import is_bundled
from .prompts import TEMPLATES


def validate(config: RunConfig) -> RunConfig:
    """Check a config; raise ConfigError listing every problem with the fix. Returns the config."""
    problems = check_fields(config)
    if problems:
        raise ConfigError("invalid config:\n- " + "\n- ".join(problems))
    problems += _check_model(config)
    problems += _check_grpo(config)
    problems += _check_data_and_rewards(config)
    if problems:
        raise ConfigError("invalid config:\n- " + "\n- ".join(problems))
    return config


def _check_model(c: RunConfig) -> list[str]:
    p = []
    m, lora = c.model, c.lora
    if is_bundled(m.name) and m.name != BUNDLED_MODEL:
        p.append(f"model.name={m.name!r}: the bundled model is {BUNDLED_MODEL}; or give a Hub id or a local directory")
    if not m.name.strip():
        p.append(f"model.name is empty: give {BUNDLED_MODEL}, a Hub id or a local directory")
    if m.fast_inference and lora.r > m.max_lora_rank:
        p.append(
            f"lora.r={lora.r} is over model.max_lora_rank={m.max_lora_rank}: "
            f"set model.max_lora_rank to at least {lora.r} or lower lora.r"
        )
    if m.vllm_standby and not m.fast_inference:
        p.append("model.vllm_standby needs model.fast_inference=true (standby is vLLM's KV cache); turn one on or the other off")
    if not lora.target_modules:
        p.append("lora.target_modules is empty: list the projections to adapt, e.g. [q_proj, v_proj]")
    return p


def _check_grpo(c: RunConfig) -> list[str]:
    p = []
    g, m = c.grpo, c.model
    effective = g.per_device_train_batch_size * g.gradient_accumulation_steps
    if effective % g.num_generations:
        p.append(
            f"effective batch grpo.per_device_train_batch_size × grpo.gradient_accumulation_steps = {effective} "
            f"is not divisible by grpo.num_generations={g.num_generations}: set per_device_train_batch_size "
            f"to a multiple of {g.num_generations} (e.g. {g.num_generations}) or change num_generations"
        )
    per_step = max(1, effective // g.num_generations)
    if c.data.source.startswith("task:") and c.data.size - c.data.eval_size < per_step:
        p.append(
            f"data.size={c.data.size} with data.eval_size={c.data.eval_size} held out leaves "
            f"{max(0, c.data.size - c.data.eval_size)} training prompts, and one step needs {per_step}: raise "
            f"data.size to at least {c.data.eval_size + per_step} or lower data.eval_size")
    if g.max_prompt_length + g.max_completion_length > m.max_seq_length:
        p.append(
            f"grpo.max_prompt_length + grpo.max_completion_length = {g.max_prompt_length + g.max_completion_length} "
            f"is over model.max_seq_length={m.max_seq_length}: raise model.max_seq_length to at least "
            f"{g.max_prompt_length + g.max_completion_length} or shorten the completion"
        )
    if g.epsilon_high is not None and g.epsilon_high < g.epsilon:
        p.append(f"grpo.epsilon_high={g.epsilon_high:g} is below grpo.epsilon={g.epsilon:g}: the upper clipping "
                 f"bound must be at least the lower one; raise it, or leave it empty for {g.epsilon:g}")
    return p


def _check_data_and_rewards(c: RunConfig) -> list[str]:
    p = []
    if c.data.template not in TEMPLATES:
        p.append(f"data.template={c.data.template!r}: choose one of {', '.join(TEMPLATES)}")
    problem = check_run_name(c.output.run_name)
    if problem:
        p.append(problem)
    if c.output.runs_dir and Path(c.output.runs_dir).expanduser().exists() \
            and not Path(c.output.runs_dir).expanduser().is_dir():
        p.append(f"output.runs_dir={c.output.runs_dir!r} is a file, not a folder: give a folder for the runs")
    if not c.rewards:
        p.append("rewards is empty: add at least one reward, e.g. {name: correctness, weight: 1.0}")
    for i, spec in enumerate(c.rewards):
        if not isinstance(spec.weight, (int, float)) or isinstance(spec.weight, bool):
            p.append(f"rewards[{i}] ({spec.name}).weight must be a number")
        if not isinstance(spec.params, dict):
            p.append(f"rewards[{i}] ({spec.name}).params must be a mapping of name: value")
        p += _check_reward_name(i, spec, c.reward_file)
    if not p and c.rewards:
        p += _check_rubric_fits_template(c)
    return p


def _check_rubric_fits_template(c: RunConfig) -> list[str]:
    """Tag-checking rewards need a template that asks for tags (`boxed` does not)."""
    from .rewards.builtin import RewardError
    from .rewards.rubric import apply_template

    try:
        apply_template(c.rewards, c.data.template)
    except RewardError as exc:
        return [str(exc)]
    return []


def _check_reward_name(index: int, spec: RewardSpec, reward_file: str | None) -> list[str]:
    """A rubric name must be a registered reward, or `user:<fn>` with a reward_file that exists.

    The user file itself is only imported in the training/eval process (see rewards.user).
    """
    from .rewards.builtin import RewardError, reward_info

    label = f"rewards[{index}] ({spec.name})"
    if spec.name.startswith(USER_PREFIX):
        if not reward_file:
            return [f"{label} names a user reward: set reward_file to the Python file that defines it"]
        if not Path(reward_file).expanduser().is_file():
            return [f"reward_file={reward_file!r} does not exist: give the path of your reward file"]
        return []
    try:
        reward_info(spec.name)
    except RewardError as exc:
        return [f"{label}: {exc}"]
    return []
