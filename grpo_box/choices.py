"""Choices known only at run time, for widgets and messages: templates, tasks, rewards, GGUF
quantizations and the model catalog of a preset.

Fixed choices (loss types, optimizers, dtypes) live in the config's field metadata
(`FieldSpec.choices`); a field whose choices come from a registry names it in
`FieldSpec.choices_from`, and `runtime_choices(name)` answers from that registry. Each registry is
imported only when asked, so listing templates does not load the reward functions.
"""

from __future__ import annotations

from .config import BUNDLED_MODEL


def runtime_choices(name: str, preset: str = "cpu") -> list[str]:
    """The valid values of registry `name`: templates | tasks | rewards | quantizations | models."""
    if name == "templates":
        from .prompts import list_templates

        return list_templates()
    if name == "tasks":
        from .tasks import list_tasks

        return [f"task:{task}" for task in list_tasks()]
    if name == "rewards":
        from .rewards.builtin import list_rewards

        return [info["name"] for info in list_rewards()]
    if name == "quantizations":
        from .llama_tools import CONVERTER_TYPES, QUANTIZE_TYPES

        return [t for t in CONVERTER_TYPES if t != "f32"] + list(QUANTIZE_TYPES)
    if name == "models":
        from .catalog import catalog_for_preset

        names = [model_id for model_id, _reason in catalog_for_preset(preset)]
        return names if BUNDLED_MODEL in names else [*names, BUNDLED_MODEL]
    raise KeyError(f"no registry named {name!r}; known: templates, tasks, rewards, quantizations, models")
