"""Built-in architecture table of the catalog models, so memory estimates work offline.

The VRAM estimate (`grpo_box.memory`) needs a model's shape: parameter count, layers, hidden and
MLP widths, attention heads, KV heads, head size, vocabulary and whether the embeddings are tied.
So that estimates work offline, the models GRPO Box offers are listed here with the values of
their published configs. Other models are read from a local directory's `config.json`
(`arch_from_config_json`), from the Hugging Face cache, or else, unless HF_HUB_OFFLINE is set,
by downloading just that repo's `config.json`. `catalog_for_preset` says which catalog models
suit each card size, with a one-line reason.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import BUNDLED_MODEL, ConfigError


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only transformer (Llama / Qwen style: GQA attention, SwiGLU MLP)."""

    params: int
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim  # differs from hidden_size in Qwen3-4B (32 x 128 vs 2560)

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer inside one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear projections (what 4-bit quantizes)."""
        per_layer = sum(a * b for a, b in self.projection_shapes().values())
        return per_layer * self.n_layers

    def embedding_params(self) -> int:
        """Input embedding plus the LM head when it is a separate matrix (both stay 16-bit)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    def computed_params(self) -> int:
        """Parameter count from the shape (norms included, biases left out)."""
        norms = (2 * self.n_layers + 1) * self.hidden_size
        return self.linear_params() + self.embedding_params() + norms


def _arch(params: float, layers: int, hidden: int, inter: int, heads: int, kv: int, head_dim: int,
          vocab: int, tied: bool) -> Arch:
    return Arch(int(params), layers, hidden, inter, heads, kv, head_dim, vocab, tied)


# Values from each model's published config.json; params are the published totals.
CATALOG: dict[str, Arch] = {
    BUNDLED_MODEL: _arch(134.5e6, 30, 576, 1536, 9, 3, 64, 49152, True),  # SmolLM2-135M-Instruct
    "unsloth/Qwen2.5-0.5B-Instruct": _arch(494.0e6, 24, 896, 4864, 14, 2, 64, 151936, True),
    "unsloth/Qwen2.5-1.5B-Instruct": _arch(1543.7e6, 28, 1536, 8960, 12, 2, 128, 151936, True),
    "unsloth/Qwen2.5-3B-Instruct": _arch(3085.9e6, 36, 2048, 11008, 16, 2, 128, 151936, True),
    "unsloth/Qwen2.5-7B-Instruct": _arch(7615.6e6, 28, 3584, 18944, 28, 4, 128, 152064, False),
    "unsloth/Qwen3-1.7B": _arch(1720.6e6, 28, 2048, 6144, 16, 8, 128, 151936, True),
    "unsloth/Qwen3-4B-Instruct-2507": _arch(4022.5e6, 36, 2560, 9728, 32, 8, 128, 151936, True),
    "unsloth/Qwen3-8B": _arch(8190.7e6, 36, 4096, 12288, 32, 8, 128, 151936, False),
    "unsloth/Llama-3.2-1B-Instruct": _arch(1235.8e6, 16, 2048, 8192, 32, 8, 64, 128256, True),
    "unsloth/Llama-3.2-3B-Instruct": _arch(3212.7e6, 28, 3072, 8192, 24, 8, 128, 128256, True),
    "unsloth/Meta-Llama-3.1-8B-Instruct": _arch(8030.3e6, 32, 4096, 14336, 32, 8, 128, 128256, False),
}

_QUANT_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit", "-unsloth-bnb-8bit", "-bnb-8bit")


def _short_name(model_id: str) -> str:
    name = model_id.strip().rstrip("/").split("/")[-1].lower()
    for suffix in _QUANT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


_BY_SHORT_NAME: dict[str, str] = {_short_name(key): key for key in CATALOG}


def lookup(model_id: str) -> Arch | None:
    """The catalog entry for a model id, ignoring the org and `-bnb-4bit` style suffixes."""
    if model_id in CATALOG:
        return CATALOG[model_id]
    key = _BY_SHORT_NAME.get(_short_name(model_id))
    return CATALOG[key] if key else None


def arch_from_config_json(path_or_dict: str | Path | dict[str, Any]) -> Arch:
    """Read an `Arch` from a Hugging Face config.json (a directory, the file, or its dict)."""
    raw = _load_config(path_or_dict)
    if isinstance(raw.get("text_config"), dict):  # multimodal configs nest the language model
        raw = {**raw, **raw["text_config"]}
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        arch = Arch(
            params=0,
            n_layers=int(raw["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(raw.get("intermediate_size") or 4 * hidden),
            n_heads=heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            vocab_size=int(raw["vocab_size"]),
            # absent means untied for Llama/Qwen configs; counting the LM head errs on the safe side
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"config.json lacks {exc.args[0]!r}: cannot size this model for the memory estimate") from exc
    return _with_params(arch, arch.computed_params())


def _with_params(arch: Arch, params: int) -> Arch:
    return Arch(params, arch.n_layers, arch.hidden_size, arch.intermediate_size, arch.n_heads,
                arch.n_kv_heads, arch.head_dim, arch.vocab_size, arch.tied_embeddings)


def _load_config(path_or_dict: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = Path(path_or_dict)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no config.json to read the model's shape from")
    return json.loads(path.read_text())


def _hub_cache_config(model_id: str) -> Path | None:
    """config.json of a Hub model already in the local Hugging Face cache (no download)."""
    if model_id.count("/") != 1:
        return None
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    snapshots = cache / f"models--{model_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/config.json")) if snapshots.is_dir() else []
    return found[-1] if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=64)
def _hub_download_config(model_id: str) -> Path:
    """Download only a Hub repo's config.json (a few KB); raises ConfigError saying why it could not."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, "config.json"))
    except Exception as exc:  # no network, a gated, private or missing repo: all end the same way
        raise ConfigError(f"could not download config.json of {model_id!r} ({type(exc).__name__}: {exc})") from exc


def resolve_arch(model_name: str) -> Arch:
    """The shape of `model_name`: the catalog, a local directory, the HF cache, else the Hub's config.json."""
    arch = lookup(model_name)
    if arch is not None:
        return arch
    if Path(model_name).expanduser().is_dir():
        return arch_from_config_json(Path(model_name).expanduser())
    cached = _hub_cache_config(model_name)
    if cached is not None:
        return arch_from_config_json(cached)
    if model_name.count("/") == 1 and not _offline():
        return arch_from_config_json(_hub_download_config(model_name))
    why = "HF_HUB_OFFLINE is set, so the Hub was not asked" if _offline() else "it is not a Hub id (owner/name)"
    raise ConfigError(
        f"model {model_name!r} is not in the built-in catalog and no config.json was found for it ({why}); "
        f"use a local model directory, a Hub id while online, or one of: {', '.join(CATALOG)}"
    )


_PRESET_MODELS: dict[str, list[tuple[str, str]]] = {
    "cpu": [
        (BUNDLED_MODEL, "bundled and offline; 135M parameters train on 2 CPU cores"),
    ],
    "8gb": [
        ("unsloth/Qwen2.5-1.5B-Instruct", "the preset's model: Unsloth's 5-7 GB GRPO reference run"),
        ("unsloth/Qwen2.5-0.5B-Instruct", "fastest steps and room for long completions; weaker reasoner"),
        ("unsloth/Llama-3.2-1B-Instruct", "a Llama alternative of about the same footprint"),
        ("unsloth/Qwen3-1.7B", "newer and stronger at math; a little larger than Qwen2.5-1.5B"),
    ],
    "12gb": [
        ("unsloth/Qwen2.5-3B-Instruct", "the preset's model: used by Unsloth's free-tier GRPO notebooks"),
        ("unsloth/Llama-3.2-3B-Instruct", "a Llama alternative of the same size"),
        ("unsloth/Qwen3-1.7B", "smaller, so longer completions or bigger groups fit"),
        ("unsloth/Qwen2.5-1.5B-Instruct", "smallest sensible choice; fast steps"),
    ],
    "16gb": [
        ("unsloth/Qwen3-4B-Instruct-2507", "the preset's model: strongest model that leaves room for 1K-token traces"),
        ("unsloth/Qwen2.5-3B-Instruct", "smaller and faster; room for larger groups"),
        ("unsloth/Llama-3.2-3B-Instruct", "a Llama alternative"),
    ],
    "24gb": [
        ("unsloth/Qwen2.5-7B-Instruct", "the preset's model: Unsloth's ~15 GB 7-8B GRPO reference"),
        ("unsloth/Meta-Llama-3.1-8B-Instruct", "Unsloth's headline 8B GRPO notebook model"),
        ("unsloth/Qwen3-8B", "newer 8B with strong reasoning"),
        ("unsloth/Qwen3-4B-Instruct-2507", "smaller: room for 2-4K-token completions"),
    ],
}


def catalog_for_preset(preset: str) -> list[tuple[str, str]]:
    """Catalog models that suit a preset's card, the preset's default first, with a reason each."""
    try:
        return list(_PRESET_MODELS[preset])
    except KeyError:
        raise ConfigError(f"no catalog list for preset {preset!r}; known: {', '.join(_PRESET_MODELS)}") from None
