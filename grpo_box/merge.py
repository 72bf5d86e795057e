"""Merge a run's LoRA adapter into its 16-bit base model, and check that the merge is faithful.

Training keeps the base frozen (often 4-bit) and saves only the LoRA adapter. llama.cpp, Ollama
and most servers want one plain model, so export starts here: load the base in its original
16/32-bit weights, apply the adapter with PEFT, `merge_and_unload()`, and save safetensors,
tokenizer, chat template and generation config to `<run>/export/merged/`. The adapter is the one
chat and evaluation load (`inference.run_adapter_dir`): adapter/, or a newer checkpoint when the
last training was cut off before it saved adapter/.

Why not Unsloth's `save_pretrained_merged(save_method="merged_16bit")`: it needs the Unsloth
model object (a GPU session) and re-reads the 16-bit base from the Hugging Face cache anyway. We
do the same with stock PEFT, on CPU, from `resolve_model(config.model.name)`. Merging into
dequantized 4-bit weights would bake the 4-bit rounding into every weight, so where the 16-bit
base is not on disk we stop and say so; `download_base=True` fetches it, `allow_4bit_merge=True`
accepts the lower-quality fallback with a warning.

The merge is checked, not trusted: greedy completions of the merged model on a few chat prompts
must equal those of base + adapter. The prompts, the merged model's tokens and, for each of those
tokens, the merged model's top logits are stored in `merged/grpo_box_merge.json`: the reference
that `export` compares each GGUF against (the top logits let it tell an f16 rounding flip at a
near-tie from a real difference).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import replace_dir
from .errors import UserError
from .hardware import has_cuda
from .inference import NEUTRAL_HF, eos_token_ids, run_adapter_dir
from .models import BaseSource, locate_base
from .progress import Progress
from .chat_format import apply_run_format, prompt_text
from .prompts import Messages, build_messages, preamble
from .runs import ADAPTER_CONFIG, ADAPTER_FILES, EXPORT, RunDir, open_run, read_adapter_config

MERGED = "merged"
MERGE_INFO = "grpo_box_merge.json"
TOP_LOGITS = 5  # per merged-model token: the candidates a GGUF's greedy choice is checked against
DEFAULT_PROMPTS = (
    "What is 7 + 5?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
)


class MergeError(UserError, RuntimeError):
    """Merging failed; the message says what to do."""


class NoAdapterError(MergeError):
    pass


class UnsupportedArchitectureError(MergeError):
    pass


@dataclass
class MergeReport:
    merged_dir: str
    base: str
    base_path: str
    base_4bit: bool
    dtype: str
    adapter: str
    adapter_fingerprint: str
    prompts: list[dict[str, Any]]  # messages, prompt_text, prompt_ids, merged_ids, merged_top, adapter_ids, base_ids
    matches: int
    changed_vs_base: int
    seconds: float
    max_new_tokens: int = 32
    eos_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.matches == len(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- public API -----------------------------------------------------------------------------------
def merge_run(run_dir: str | Path, out_dir: str | Path | None = None, progress: Progress | None = None, *,
              allow_4bit_merge: bool = False, download_base: bool = False) -> Path:
    """Merge the run's adapter into its base and save it (default `<run>/export/merged/`)."""
    report = merge_with_report(run_dir, out_dir, progress, allow_4bit_merge=allow_4bit_merge, download_base=download_base)
    return Path(report.merged_dir)


def merge_with_report(run_dir: str | Path, out_dir: str | Path | None = None, progress: Progress | None = None, *,
                      allow_4bit_merge: bool = False, download_base: bool = False,
                      prompts: tuple[str, ...] = DEFAULT_PROMPTS, max_new_tokens: int = 32) -> MergeReport:
    """`merge_run`, returning the parity report (also written to `merged/grpo_box_merge.json`)."""
    say = progress or (lambda msg, frac: None)
    start = time.time()
    run = open_run(run_dir)
    adapter = require_adapter(run)
    config = run.config()
    out = Path(out_dir) if out_dir else default_merged_dir(run)
    say("locating the 16-bit base model", 0.02)
    base = locate_run_base(run, allow_4bit_merge=allow_4bit_merge, download_base=download_base)
    check_architecture(base.path, local_only=not download_base)
    notes = _base_warnings(base) + _checkpoint_note(run, adapter)
    say(f"loading base {base.name}", 0.05)
    model, dtype = load_base(base)
    tokenizer = load_tokenizer(adapter, base)
    say(f"applying the LoRA adapter ({adapter.relative_to(run.path)})", 0.25)
    peft_model = _apply_adapter(model, adapter)
    say("greedy reference with base + adapter", 0.3)
    apply_run_format(tokenizer, config.data)  # as the run trained; the merged tokenizer (and GGUF) keep it
    cases = build_cases(tokenizer, preamble(config.data), prompts)
    _generate_all(peft_model, tokenizer, cases, "adapter_ids", max_new_tokens)
    with peft_model.disable_adapter():
        _generate_all(peft_model, tokenizer, cases, "base_ids", max_new_tokens)
    say("merging (merge_and_unload)", 0.5)
    merged = peft_model.merge_and_unload()
    _strip_quantization(merged)
    say("greedy check of the merged model", 0.6)
    _generate_all(merged, tokenizer, cases, "merged_ids", max_new_tokens)
    report = _report(out, base, dtype, adapter, cases, start, notes)
    report.max_new_tokens, report.eos_ids = max_new_tokens, eos_token_ids(merged, tokenizer)
    say(f"saving merged model to {out}", 0.75)
    _save_atomic(merged, tokenizer, base, report, out)
    say(f"merged: {report.matches}/{len(cases)} prompts identical to base + adapter", 1.0)
    return report


def default_merged_dir(run: RunDir) -> Path:
    return run.path / EXPORT / MERGED


def read_merge_info(merged_dir: str | Path) -> dict[str, Any] | None:
    path = Path(merged_dir) / MERGE_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def merged_is_current(run: RunDir, merged_dir: str | Path | None = None) -> bool:
    """True when `merged_dir` holds a complete merge of the adapter the run offers (`run_adapter_dir`)."""
    info = read_merge_info(merged_dir or default_merged_dir(run))
    adapter = run_adapter_dir(run)
    return bool(info) and adapter is not None and info.get("adapter_fingerprint") == adapter_fingerprint(adapter)


def require_adapter(run: RunDir) -> Path:
    """The adapter merge and export use: the one chat and evaluation load (`inference.run_adapter_dir`)."""
    adapter = run_adapter_dir(run)
    if adapter is None:
        raise NoAdapterError(
            f"run {run.path.name} has no LoRA adapter ({run.adapter_dir}/{ADAPTER_CONFIG} is missing): "
            f"train first (python -m grpo_box train …), then merge or export"
        )
    return adapter


def _checkpoint_note(run: RunDir, adapter: Path) -> list[str]:
    """Say so when the merged weights are a checkpoint's, not adapter/'s."""
    if adapter == run.adapter_dir:
        return []
    saved = run.adapter_step()
    why = (f"newer than adapter/ (saved at step {saved}): the last training stopped before saving adapter/"
           if run.has_adapter() else "the run has no adapter/ yet")
    return [f"merged {adapter.relative_to(run.path)}, {why}"]


def adapter_fingerprint(adapter_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = adapter_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


# -- the base model -------------------------------------------------------------------------------
def locate_run_base(run: RunDir, *, allow_4bit_merge: bool = False, download_base: bool = False) -> BaseSource:
    """The 16-bit base of the run's model (`models.locate_base`), the adapter's own base as a 4-bit fallback."""
    adapter = run_adapter_dir(run)
    adapter_base = read_adapter_config(adapter).get("base_model_name_or_path") if adapter is not None else None
    return locate_base(run.config().model.name, adapter_base, allow_4bit_merge=allow_4bit_merge,
                       download_base=download_base)


def _base_warnings(base: BaseSource) -> list[str]:
    if not base.quantized_4bit:
        return []
    msg = (f"merging into DEQUANTIZED 4-bit weights of {base.name}: every weight keeps its 4-bit rounding, "
           f"so quality is below a 16-bit merge; download the 16-bit base for a faithful export")
    warnings.warn(msg, stacklevel=3)
    return [msg]


def check_architecture(path: str, local_only: bool = True) -> Any:
    """The model's config if transformers can load it as a causal LM; else a clear error."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    raw = _raw_config(path)
    label = f"model_type {raw.get('model_type')!r}, architectures {raw.get('architectures')}"
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local_only)
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitectureError(
            f"{path}: unsupported architecture ({label}): the installed transformers cannot load it "
            f"({str(exc).splitlines()[0][:160]}). GRPO Box merges decoder-only causal LMs such as Llama, Qwen2/3, Mistral, Gemma"
        ) from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedArchitectureError(
            f"{path}: unsupported architecture ({label}): not a causal language model; "
            f"GRPO Box merges decoder-only causal LMs such as Llama, Qwen2/3, Mistral, Gemma"
        )
    return config


def _raw_config(path: str) -> dict[str, Any]:
    file = Path(path) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_base(base: BaseSource) -> tuple[Any, str]:
    """Load the base on CPU in its stored dtype (16-bit, or float32 as the bundled model is)."""
    import torch
    from transformers import AutoModelForCausalLM

    if base.quantized_4bit:
        return _load_dequantized_4bit(base)
    dtype = _stored_dtype(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype, low_cpu_mem_usage=True)
    model.eval()
    return model, str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype)


def _stored_dtype(path: str) -> Any:
    import torch

    raw = _raw_config(path)
    name = raw.get("dtype") or raw.get("torch_dtype") or (raw.get("text_config") or {}).get("dtype")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(name), torch.bfloat16)


def _load_dequantized_4bit(base: BaseSource) -> tuple[Any, str]:
    """bitsandbytes 4-bit base, dequantized to 16-bit (needs bitsandbytes, usually a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, device_map="auto", low_cpu_mem_usage=True)
        model = model.dequantize()
    except Exception as exc:
        raise MergeError(f"could not load and dequantize the 4-bit base {base.name}: {exc}") from exc
    dtype = half_dtype()
    model = model.to(device="cpu", dtype=dtype)
    model.eval()
    return model, str(dtype).replace("torch.", "")


def half_dtype() -> Any:
    """torch.bfloat16 where the GPU supports it, else torch.float16: also without a GPU, and when a
    broken driver cannot be asked (`hardware.has_cuda`, the engine's one CUDA probe)."""
    import torch

    if not has_cuda():
        return torch.float16
    try:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    except Exception:  # the driver failed after the probe: the 16-bit type every GPU runs
        return torch.float16


def _strip_quantization(model: Any) -> None:
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def load_tokenizer(adapter: Path, base: BaseSource) -> Any:
    """The adapter's tokenizer (saved with it by training), else the base's; keeps a chat template."""
    from transformers import AutoTokenizer

    sources = [str(adapter), base.path]
    tokenizer = None
    for src in sources:
        try:
            tokenizer = AutoTokenizer.from_pretrained(src)
            break
        except (OSError, ValueError):
            continue
    if tokenizer is None:
        raise MergeError(f"no tokenizer found in {adapter} or {base.path}")
    if not tokenizer.chat_template and base.path != sources[0]:
        tokenizer.chat_template = AutoTokenizer.from_pretrained(base.path).chat_template
    if not tokenizer.chat_template:
        raise MergeError("the tokenizer has no chat template: GGUF/Ollama export needs one; use an instruct/chat model")
    return tokenizer


def _apply_adapter(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise MergeError(f"the adapter in {adapter_dir} does not fit the base model: {exc}") from exc
    peft_model.eval()
    return peft_model


# -- greedy parity --------------------------------------------------------------------------------
def run_preamble(run: RunDir) -> Messages:
    """What the run put before every question (system prompt, one-shot turn); [] when its config
    cannot be read, so the export's Modelfile of a run with a damaged config is still written."""
    try:
        return preamble(run.config().data)
    except Exception:
        return []


def build_cases(tokenizer: Any, system: str | Messages | None, prompts: tuple[str, ...]) -> list[dict[str, Any]]:
    """Chat prompts as the trained model sees them: [preamble, user] with the generation prompt."""
    cases = []
    for question in prompts:
        messages = build_messages(question, system)
        text = prompt_text(tokenizer, messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cases.append({"messages": messages, "prompt_text": text, "prompt_ids": list(ids)})
    return cases


def greedy_ids(model: Any, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation token ids (EOS included when reached)."""
    return greedy_with_logits(model, tokenizer, prompt_ids, max_new_tokens, top_k=0)[0]


def greedy_with_logits(model: Any, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int,
                       top_k: int = TOP_LOGITS) -> tuple[list[int], list[list[list[float]]]]:
    """Greedy ids plus, per generated token, the `top_k` [token id, logit] pairs it was chosen from.

    The model's own generation_config (a repetition penalty, min_new_tokens, …) must not steer the
    choice: llama.cpp, vLLM and the evaluation do not apply it. transformers fills every setting a
    GenerationConfig leaves None from it, so the neutral values go as keyword arguments, which it
    applies last and keeps even when None (as inference.Generator does)."""
    import torch

    gen = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_ids(model, tokenizer),
               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
               output_logits=top_k > 0, return_dict_in_generate=True, **NEUTRAL_HF,
               temperature=None, top_p=None, top_k=None)
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen)
    top = [_top_pairs(step[0], top_k) for step in out.logits] if top_k else []
    return out.sequences[0, len(prompt_ids):].tolist(), top


def _top_pairs(logits: Any, k: int) -> list[list[float]]:
    import torch

    values, indices = torch.topk(logits.float(), k)
    return [[int(i), float(v)] for i, v in zip(indices, values)]


def _generate_all(model: Any, tokenizer: Any, cases: list[dict[str, Any]], key: str, max_new_tokens: int) -> None:
    for case in cases:
        if key == "merged_ids":
            case[key], case["merged_top"] = greedy_with_logits(model, tokenizer, case["prompt_ids"], max_new_tokens)
            case["merged_text"] = tokenizer.decode(case[key], skip_special_tokens=True)
        else:
            case[key] = greedy_ids(model, tokenizer, case["prompt_ids"], max_new_tokens)


def _report(out: Path, base: BaseSource, dtype: str, adapter: Path, cases: list[dict[str, Any]], start: float,
            notes: list[str]) -> MergeReport:
    matches = sum(c["merged_ids"] == c["adapter_ids"] for c in cases)
    changed = sum(c["adapter_ids"] != c["base_ids"] for c in cases)
    if changed == 0:
        notes.append("the adapter does not change any greedy reply on the check prompts (little training?)")
    if matches < len(cases):
        notes.append(f"merged model differs from base + adapter on {len(cases) - matches} of {len(cases)} prompts")
    return MergeReport(str(out), base.name, base.path, base.quantized_4bit, dtype, str(adapter),
                       adapter_fingerprint(adapter), cases, matches, changed, round(time.time() - start, 1),
                       warnings=notes)


# -- saving ---------------------------------------------------------------------------------------
def _save_atomic(model: Any, tokenizer: Any, base: BaseSource, report: MergeReport, out: Path) -> None:
    """Write into a temp dir beside `out`, then swap it in: a failed save leaves the old merge."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the merged model is an ordinary output folder
    from safetensors import SafetensorError

    try:
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(str(tmp))
        _copy_generation_config(base, tmp)
        (tmp / MERGE_INFO).write_text(json.dumps(report.to_dict(), indent=2))
        replace_dir(tmp, out)
    except SafetensorError as exc:  # safetensors reports I/O failures (a full disk) as its own type
        raise OSError(f"saving the merged weights to {out.parent} failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_generation_config(base: BaseSource, out: Path) -> None:
    """Keep the base's sampling defaults (the merged model's own copy may have lost them)."""
    src = Path(base.path) / "generation_config.json"
    if src.is_file() and not base.quantized_4bit:
        shutil.copyfile(src, out / "generation_config.json")
