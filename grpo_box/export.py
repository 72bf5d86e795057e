"""Export a trained run to GGUF for llama.cpp / Ollama / Open WebUI, and check every file.

Steps (`export_run`): check the adapter, the converter and the architecture; check free disk
space against an estimate of every output; merge the LoRA into the 16-bit base if the run has no
current merge (`grpo_box.merge`); convert with llama.cpp's `convert_hf_to_gguf.py` to f16 / bf16
/ q8_0 / f32; quantize K-quants and the rest with `llama_cpp.llama_model_quantize`
(`grpo_box.llama_tools`); optionally convert the adapter alone with `convert_lora_to_gguf.py`.
Every file is written under a temporary name in `<run>/export/` and renamed only when complete,
so a failed or interrupted export never damages an earlier one.

Every GGUF is then loaded with llama-cpp-python and greedy-decoded on the merge's check prompts:
f16/bf16/f32 must reproduce the merged HF model's tokens, quantized files report how many
prompts agree and how far. "Reproduce" allows one thing: a reply may part from the merged
model's where that model itself was at a near-tie, i.e. the GGUF's token was among its top
logits and within `NEAR_TIE` of the chosen one. Writing float32 weights as f16 moves logits by
a few thousandths; a flip there is rounding, not a broken export, and it is reported as such. The GGUF's chat template and EOS token are compared with the HF
tokenizer's, and a chat completion must end at EOS instead of running to max tokens.

Next to each GGUF goes an Ollama Modelfile. Ollama does not run Jinja chat templates; its TEMPLATE
is a Go text/template, so for ChatML models (`<|im_start|>role … <|im_end|>`: Qwen, SmolLM, …) we
write the Go equivalent, including the HF template's default system prompt, and check it by
rendering both on probe conversations. `render_modelfile_template` is a small renderer for the
subset of Go templates we emit (Ollama's own renderer is Go code; nothing in Python does this).
Other chat formats get a Modelfile without TEMPLATE (Ollama then reads the GGUF's template).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from . import llama_tools
from .merge import (
    BaseSource,
    NoAdapterError,
    UnsupportedArchitectureError,
    default_merged_dir,
    locate_base,
    merge_with_report,
    merged_is_current,
    read_merge_info,
    require_adapter,
)
from .modelfile import modelfile_text, ollama_template, render_modelfile_template, stop_tokens
from .runs import EXPORT, RunDir, open_run

Progress = Callable[[str, float], None]

__all__ = [
    "DiskSpaceError", "ExportError", "ExportReport", "GGUFResult", "LoraResult", "NoAdapterError",
    "UnsupportedArchitectureError", "estimate_sizes", "export_run", "find_gguf", "free_bytes",
    "modelfile_text", "ollama_template", "push_to_hub", "render_modelfile_template", "verify_gguf",
]

REPORT = "export.json"
# Approximate bits per weight of each output type (llama.cpp's own tables, rounded up).
BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.6, "q5_0": 5.5,
    "q5_1": 6.0, "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q4_1": 5.0, "q3_k_l": 4.3, "q3_k_m": 3.9,
    "q3_k_s": 3.5, "q2_k": 3.4,
}
LOSSLESS = ("f32", "f16", "bf16")  # must reproduce the merged model's greedy tokens
NEAR_TIE = 0.1  # logits: a greedy flip within this of the merged model's choice is rounding
_MARGIN_BYTES = 256 * 2**20


class ExportError(RuntimeError):
    """An export problem; the message says what to change."""


class DiskSpaceError(ExportError):
    pass


# -- report ------------------------------------------------------------------------------------
@dataclass
class GGUFResult:
    quant: str
    path: str
    size_bytes: int
    seconds: float
    verified: bool = False  # False with verify=False: the checks below were not run
    prompts: int = 0
    identical: int = 0  # prompts whose greedy tokens equal the merged HF model's
    near_ties: int = 0  # prompts that part from them only where the merged model was at a near-tie
    prefix_agreement: float = 0.0  # mean share of reference tokens reproduced before the first difference
    tokenizer_match: bool = False  # llama.cpp tokenizes the prompts like the HF tokenizer
    chat_template_ok: bool = False  # GGUF template == HF template and renders the same prompt
    eos_token: str = ""
    eos_ok: bool = False
    chat_stops: bool = False  # a chat reply ended at EOS, not at max tokens
    chat_reply: str = ""
    fallback_tensors: str = ""  # "180/272" when K-quant rows did not fit and llama.cpp fell back
    modelfile: str = ""
    ollama_command: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def exact_required(self) -> bool:
        return self.quant in LOSSLESS

    @property
    def ok(self) -> bool:
        """No check failed (an unverified file counts as ok; see `verified`)."""
        if not self.verified:
            return True
        parity = self.identical + self.near_ties == self.prompts if self.exact_required else True
        return parity and self.chat_template_ok and self.eos_ok and self.chat_stops and self.tokenizer_match

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class LoraResult:
    path: str
    size_bytes: int
    seconds: float
    alpha: float | None = None
    tensors: int = 0
    identical: int | None = None  # base GGUF + this LoRA vs the merged model, when checked
    near_ties: int = 0
    prompts: int = 0
    usage: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # llama.cpp applies the adapter unmerged in f16 (W·x + B·A·x), not W + B·A in the merge's
        # precision, so a reply may part from the merged model's at a near-tie.
        return self.tensors > 0 and (self.identical is None or self.identical + self.near_ties == self.prompts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class ExportReport:
    run: str
    export_dir: str
    merged_dir: str | None
    files: list[GGUFResult] = field(default_factory=list)
    lora: LoraResult | None = None
    modelfile: str = ""
    ollama_command: str = ""
    seconds: float = 0.0
    converter: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files) and (self.lora is None or self.lora.ok)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [f.to_dict() for f in self.files]
        data["lora"] = self.lora.to_dict() if self.lora else None
        data["ok"] = self.ok
        return data

    def format_table(self) -> str:
        header = ("file", "size", "tokens vs merged HF", "template", "EOS", "stops", "ok")
        rows = [header] + [_row(f) for f in self.files]
        if self.lora:
            lo = self.lora
            rows.append((Path(lo.path).name, _mb(lo.size_bytes),
                         "-" if lo.identical is None else
                         f"{lo.identical}/{lo.prompts} identical, {lo.near_ties} near-tie (base+LoRA)",
                         "-", "-", "-", "yes" if lo.ok else "NO"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [""] + [f"ollama: {f.ollama_command}" for f in self.files if f.ollama_command]
        if self.lora and self.lora.usage:
            lines.append(f"LoRA: {self.lora.usage}")
        lines += [f"note: {n}" for f in self.files for n in f.notes] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _row(f: GGUFResult) -> tuple[str, ...]:
    if not f.verified:
        return (Path(f.path).name, _mb(f.size_bytes), "not checked", "-", "-", "-", "-")
    agree = f"{f.identical}/{f.prompts} identical"
    if f.near_ties:
        agree += f", {f.near_ties} near-tie"
    if f.identical + f.near_ties < f.prompts:
        agree += f" ({f.prefix_agreement:.0%} prefix)"
    yes = lambda b: "ok" if b else "BAD"  # noqa: E731
    return (Path(f.path).name, _mb(f.size_bytes), agree, yes(f.chat_template_ok), f.eos_token or "?",
            "yes" if f.chat_stops else "NO", "yes" if f.ok else "NO")


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


# -- public API --------------------------------------------------------------------------------
def export_run(run_dir: str | Path, quants: list[str] | tuple[str, ...] = ("f16", "q4_k_m"), lora: bool = False,
               progress: Progress | None = None, *, allow_4bit_merge: bool = False, download_base: bool = False,
               verify: bool = True) -> ExportReport:
    """Merge (if needed), convert, quantize and verify; returns the report (also in export/export.json)."""
    say = progress or (lambda msg, frac: None)
    start = time.time()
    run = open_run(run_dir)
    require_adapter(run)
    quants = normalize_quants(quants)
    if not quants and not lora:
        raise ExportError("nothing to export: give at least one quantization (e.g. f16, q4_k_m) or lora=True")
    say("checking converter, architecture and disk space", 0.0)
    base = locate_base(run.config().model.name, run, allow_4bit_merge=allow_4bit_merge, download_base=download_base)
    check_convertible(base)
    export_dir = run.path / EXPORT
    export_dir.mkdir(parents=True, exist_ok=True)
    need_merge = bool(quants) and not merged_is_current(run)
    check_disk(export_dir, estimate_sizes(base, quants, need_merge, lora))
    report = ExportReport(run.path.name, str(export_dir), None, converter=_converter_info())
    if quants:
        _export_full(run, base, quants, need_merge, report, say, verify, allow_4bit_merge, download_base)
    if lora:
        report.lora = _export_lora(run, base, export_dir, say, verify)
    report.seconds = round(time.time() - start, 1)
    _write_json(export_dir / REPORT, _with_earlier_files(export_dir, report))
    say(f"export finished: {'all checks passed' if report.ok else 'some checks FAILED, see the report'}", 1.0)
    return report


def _with_earlier_files(export_dir: Path, report: ExportReport) -> dict[str, Any]:
    """export.json lists every file in export/: this export's, plus earlier ones it did not redo."""
    data = report.to_dict()
    old = _read_json(export_dir / REPORT, {}) or {}
    redone = {f.quant for f in report.files}
    kept = [f for f in old.get("files", []) if f.get("quant") not in redone and Path(f.get("path", "")).is_file()]
    data["files"] = kept + data["files"]
    old_lora = old.get("lora") or {}
    if data["lora"] is None and Path(old_lora.get("path", "")).is_file():
        data["lora"] = old_lora
    for key in ("modelfile", "ollama_command", "merged_dir"):
        data[key] = data[key] or old.get(key)
    data["ok"] = all(f.get("ok") for f in data["files"]) and (not data["lora"] or bool(data["lora"].get("ok")))
    return data


def normalize_quants(quants: list[str] | tuple[str, ...] | str) -> list[str]:
    items = [quants] if isinstance(quants, str) else list(quants)
    out: list[str] = []
    for q in (str(x).strip().lower() for x in items):
        if q not in BITS_PER_WEIGHT:
            raise ExportError(f"unknown quantization {q!r}; choose from: {', '.join(BITS_PER_WEIGHT)}")
        if q not in out:
            out.append(q)
    return sorted(out, key=lambda q: (q not in llama_tools.CONVERTER_TYPES, out.index(q)))


def find_gguf(run_dir: str | Path, quant: str | None = None) -> Path:
    """A run's exported model GGUF: `quant` if given, else the smallest quantized one, else f16/bf16/f32."""
    run = open_run(run_dir)
    stem = _slug(run.path.name)
    found = {p.name[len(stem) + 1:-len(".gguf")]: p for p in (run.path / EXPORT).glob(f"{stem}-*.gguf")}
    found = {q: p for q, p in found.items() if q in BITS_PER_WEIGHT}
    if quant:
        found = {q: p for q, p in found.items() if q == quant.lower()}
    if not found:
        raise ExportError(f"run {run.path.name} has no exported GGUF{' ' + quant if quant else ''}: run export first")
    best = min(found, key=lambda q: (q in LOSSLESS, BITS_PER_WEIGHT[q]))
    return found[best]


# -- checks before any work --------------------------------------------------------------------
def check_convertible(base: BaseSource) -> None:
    """The converter is installed and knows the base's architecture (checked before merging).

    A Hub base that is not downloaded yet (download_base=True) is checked after the merge instead.
    """
    llama_tools.ensure_converter()
    config = _base_config(base)
    if config:
        check_architecture_supported(config, base.path)


def check_architecture_supported(config: dict[str, Any], where: str | Path) -> None:
    archs = config.get("architectures") or []
    supported = llama_tools.supported_architectures()
    if archs and archs[0] in supported:
        return
    close = sorted(a for a in supported if archs and a.lower()[:5] == archs[0].lower()[:5])[:8]
    raise UnsupportedArchitectureError(
        f"unsupported architecture {archs or '(none in config.json)'} in {where}: llama.cpp's converter "
        f"(llama-cpp-python {llama_tools.llama_cpp_version()}) cannot turn it into GGUF"
        + (f"; similar supported names: {', '.join(close)}" if close else "")
        + ". Train on a supported model (Llama, Qwen2/3, Mistral, Gemma, SmolLM, Phi-3, …) or export the LoRA adapter only"
    )


def _base_config(base: BaseSource) -> dict[str, Any]:
    path = Path(base.path) / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    from .merge import cached_snapshot

    snap = cached_snapshot(base.path)
    return json.loads((snap / "config.json").read_text()) if snap is not None else {}


def free_bytes(path: Path) -> int:
    """Free disk space where `path` lives (the one function tests replace to simulate a full disk)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def count_params(model_dir: Path) -> int:
    """Parameter count from safetensors headers (no weights are read)."""
    total = 0
    for file in model_dir.glob("*.safetensors"):
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        total += sum(prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def estimate_sizes(base: BaseSource, quants: list[str], need_merge: bool, lora: bool) -> dict[str, int]:
    """Bytes each output will take (estimates, rounded up), keyed by what it is."""
    params = _param_count(base)
    sizes: dict[str, int] = {}
    if need_merge:
        sizes["merged HF model"] = int(params * _stored_bytes(base))
    for q in quants:
        sizes[q] = int(params * BITS_PER_WEIGHT[q] / 8 * 1.1)
    if any(q not in llama_tools.CONVERTER_TYPES for q in quants) and not any(q in LOSSLESS for q in quants):
        sizes["temporary f16 for quantizing"] = params * 2
    if lora:
        sizes["LoRA GGUF + temporary base f16"] = params * 2 + 64 * 2**20
    return sizes


def _param_count(base: BaseSource) -> int:
    """Parameters of the base; 0 (so only the margin is checked) when nothing tells us."""
    from .merge import cached_snapshot

    local = Path(base.path) if Path(base.path).is_dir() else cached_snapshot(base.path)
    if local is not None:
        # bitsandbytes packs two 4-bit weights per stored byte
        return count_params(local) * (2 if base.quantized_4bit else 1)
    try:
        from .catalog import resolve_arch

        return resolve_arch(base.name).params
    except Exception:
        return 0


def _stored_bytes(base: BaseSource) -> int:
    if base.quantized_4bit:
        return 2
    config = _base_config(base)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return 4 if dtype == "float32" else 2


def check_disk(export_dir: Path, sizes: dict[str, int]) -> None:
    need = int(sum(sizes.values()) * 1.1) + _MARGIN_BYTES
    free = free_bytes(export_dir)
    if free < need:
        parts = ", ".join(f"{k} {_mb(v)}" for k, v in sizes.items())
        raise DiskSpaceError(
            f"not enough free disk space in {export_dir}: the export needs about {_mb(need)} ({parts}, plus margin) "
            f"but only {_mb(free)} is free. Free some space, or export fewer/smaller files (e.g. quants=['q4_k_m'])"
        )


def _converter_info() -> dict[str, Any]:
    return {"llama_cpp_python": llama_tools.llama_cpp_version(), "script": str(llama_tools.ensure_converter()),
            "gguf": llama_tools.gguf_versions()}


# -- full-model export -------------------------------------------------------------------------
def _export_full(run: RunDir, base: BaseSource, quants: list[str], need_merge: bool, report: ExportReport,
                 say: Progress, verify: bool, allow_4bit_merge: bool, download_base: bool) -> None:
    merged = default_merged_dir(run)
    if need_merge:
        merge_with_report(run.path, merged, _scaled(say, 0.02, 0.3), allow_4bit_merge=allow_4bit_merge,
                          download_base=download_base)
    report.merged_dir = str(merged)
    check_architecture_supported(_read_json(merged / "config.json", {}), merged)
    info = read_merge_info(merged) or {}
    stem = _slug(run.path.name)
    export_dir = run.path / EXPORT
    produced = _produce_all(merged, export_dir, stem, quants, _scaled(say, 0.3, 0.8))
    for i, (quant, path, seconds, log) in enumerate(produced):
        result = GGUFResult(quant, str(path), path.stat().st_size, seconds, fallback_tensors=_fallbacks(log))
        if verify:
            say(f"verifying {path.name} in llama.cpp", 0.8 + 0.15 * i / len(produced))
            verify_gguf(path, info, merged, result)
        _attach_modelfile(run, merged, path, quant, result)
        report.files.append(result)
    best = next((f for f in report.files if f.quant not in LOSSLESS), report.files[0])
    report.modelfile, report.ollama_command = _default_modelfile(export_dir, best)
    report.warnings += info.get("warnings", [])


def _produce_all(merged: Path, export_dir: Path, stem: str, quants: list[str],
                 say: Progress) -> list[tuple[str, Path, float, Path]]:
    """Convert / quantize each requested type; returns (quant, path, seconds, log) per file."""
    logs = export_dir / "logs"
    out: list[tuple[str, Path, float, Path]] = []
    source16: Path | None = None
    temp16: Path | None = None
    try:
        for i, quant in enumerate(quants):
            step = _scaled(say, i / len(quants), (i + 1) / len(quants))
            final = export_dir / f"{stem}-{quant}.gguf"
            log = logs / f"{quant}.log"
            t0 = time.time()
            if quant in llama_tools.CONVERTER_TYPES:
                with _staged(final) as tmp:
                    step(f"converting to {quant}", 0.0)
                    _convert(merged, tmp, quant, log, step)
                source16 = final if quant in ("f16", "bf16") and source16 is None else source16
            else:
                if source16 is None:
                    temp16 = export_dir / f".{stem}-intermediate-f16.gguf.partial"
                    step("converting to f16 (temporary, for quantizing)", 0.0)
                    _convert(merged, temp16, _intermediate_type(merged), logs / "intermediate.log", step)
                    source16 = temp16
                with _staged(final) as tmp:
                    step(f"quantizing to {quant}", 0.5)
                    _quantize(source16, tmp, quant, log)
            out.append((quant, final, round(time.time() - t0, 1), log))
    finally:
        if temp16 is not None:
            temp16.unlink(missing_ok=True)
    return out


def _convert(model_dir: Path, outfile: Path, outtype: str, log: Path, progress: Progress) -> None:
    llama_tools.convert_hf(model_dir, outfile, outtype, log, progress)


def _quantize(src: Path, dst: Path, quant: str, log: Path) -> None:
    llama_tools.quantize(src, dst, quant, log)


def _intermediate_type(merged: Path) -> str:
    dtype = str(_read_json(merged / "config.json", {}).get("dtype", ""))
    return "bf16" if dtype == "bfloat16" else "f16"


@contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it over `final` only if the block succeeds."""
    tmp = final.with_name(f".{final.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ExportError(f"{final.name}: the converter reported success but wrote nothing")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _fallbacks(log: Path) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    match = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", text)
    return f"{match.group(1)}/{match.group(2)}" if match else ""


# -- verification in llama.cpp -----------------------------------------------------------------
def verify_gguf(path: Path, merge_info: dict[str, Any], merged_dir: Path, result: GGUFResult,
                chat_max_tokens: int = 256) -> GGUFResult:
    """Load `path` in llama-cpp-python and fill `result` with parity, template, EOS and stop checks."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    cases = merge_info.get("prompts", [])
    llm = _load_llama(path, cases, chat_max_tokens)
    try:
        _check_metadata(llm, tokenizer, cases, result)
        eos_ids = set(merge_info.get("eos_ids", [])) | {llm.token_eos()}
        _check_parity(llm, cases, eos_ids, int(merge_info.get("max_new_tokens", 32)), result)
        _check_chat_stop(llm, cases, eos_ids, chat_max_tokens, result)
    finally:
        llm.close()
    result.verified = True
    if result.fallback_tensors:
        result.notes.append(f"{Path(path).name}: {result.fallback_tensors} tensors fell back to another type "
                            f"(row width not a multiple of the K-quant block of 256)")
    return result


def _load_llama(path: Path, cases: list[dict[str, Any]], chat_max_tokens: int) -> Any:
    from llama_cpp import Llama

    longest = max((len(c["prompt_ids"]) + len(c.get("merged_ids", [])) for c in cases), default=0)
    n_ctx = max(512, longest + chat_max_tokens + 64)
    return Llama(model_path=str(path), n_ctx=n_ctx, seed=0, verbose=False)


def _check_metadata(llm: Any, tokenizer: Any, cases: list[dict[str, Any]], result: GGUFResult) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template") or ""
    eos_text = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
    result.eos_token = eos_text
    result.eos_ok = eos_text == tokenizer.eos_token
    same_template = template.strip() == (tokenizer.chat_template or "").strip()
    formatter = Jinja2ChatFormatter(template, eos_text, tokenizer.bos_token or "") if template else None
    renders = bool(formatter) and all(formatter(messages=c["messages"]).prompt == c["prompt_text"] for c in cases)
    result.chat_template_ok = same_template and renders
    result.tokenizer_match = all(
        llm.tokenize(c["prompt_text"].encode(), add_bos=False, special=True) == c["prompt_ids"] for c in cases
    )
    if not result.eos_ok:
        result.notes.append(f"GGUF EOS is {eos_text!r} but the HF tokenizer's is {tokenizer.eos_token!r}")


def llama_greedy(llm: Any, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    out: list[int] = []
    # Start from an empty KV cache: llama-cpp-python's prefix reuse between prompts that share a
    # beginning (same system prompt) gave different tokens than a fresh evaluation.
    llm.reset()
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token in eos_ids or len(out) >= max_new_tokens:
            break
    return out


def _check_parity(llm: Any, cases: list[dict[str, Any]], eos_ids: set[int], max_new_tokens: int,
                  result: GGUFResult) -> None:
    shares = []
    for case in cases:
        ref = case["merged_ids"]
        got = llama_greedy(llm, case["prompt_ids"], max_new_tokens, eos_ids)
        verdict, gap = compare_to_merged(got, case)
        result.identical += verdict == "identical"
        result.near_ties += verdict == "near-tie"
        if verdict == "near-tie":
            result.notes.append(f"{result.quant}: one reply parts from the merged model's at token "
                                f"{_prefix_len(got, ref) + 1}, where its top two logits were {gap:.4f} apart")
        shares.append(_prefix_len(got, ref) / max(len(ref), 1))
    result.prompts = len(cases)
    result.prefix_agreement = round(sum(shares) / max(len(shares), 1), 3)


def compare_to_merged(got: list[int], case: dict[str, Any]) -> tuple[str, float | None]:
    """'identical', 'near-tie' (with the logit gap) or 'differs' against the merged model's reply.

    A near-tie: at the first differing token, the GGUF's choice was among the merged model's
    top logits (`merged_top`, written by the merge) and within NEAR_TIE of its greedy choice.
    """
    ref = case["merged_ids"]
    if got == ref:
        return "identical", None
    i = _prefix_len(got, ref)
    top = case.get("merged_top") or []
    if i >= min(len(got), len(ref), len(top)):
        return "differs", None  # one reply is a prefix of the other, or no logits were kept
    logits = {int(token): logit for token, logit in top[i]}
    if got[i] not in logits:
        return "differs", None
    gap = logits[ref[i]] - logits[got[i]]
    return ("near-tie" if gap <= NEAR_TIE else "differs"), gap


def _prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _check_chat_stop(llm: Any, cases: list[dict[str, Any]], eos_ids: set[int], max_tokens: int,
                     result: GGUFResult) -> None:
    """A chat completion through the GGUF's own template must stop at EOS, not at max_tokens.

    Uses a check prompt whose merged-model reply ended at EOS when there is one, so a model that
    simply talks long is not mistaken for one that never stops.
    """
    if not cases:
        return
    case = next((c for c in cases if c["merged_ids"] and c["merged_ids"][-1] in eos_ids), cases[0])
    llm.reset()
    reply = llm.create_chat_completion(messages=case["messages"], max_tokens=max_tokens, temperature=0.0, seed=0)
    choice = reply["choices"][0]
    result.chat_stops = choice.get("finish_reason") == "stop"
    result.chat_reply = (choice["message"].get("content") or "")[:500]
    if not result.chat_stops:
        result.notes.append(f"{Path(result.path).name}: chat reply ran to {max_tokens} tokens without EOS")


# -- Ollama Modelfile --------------------------------------------------------------------------
def _attach_modelfile(run: RunDir, merged: Path, gguf: Path, quant: str, result: GGUFResult) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    template = ollama_template(tokenizer)
    if template is None:
        result.notes.append("chat template is not ChatML: the Modelfile has no TEMPLATE, Ollama will use the GGUF's")
    stops = stop_tokens(tokenizer, template is not None)
    path = gguf.with_suffix(".Modelfile")
    _write_text_atomic(path, modelfile_text(gguf.name, template, stops, _run_system_prompt(run)))
    result.modelfile = str(path)
    result.ollama_command = f"ollama create {_slug(run.path.name)}:{quant} -f {path}"


def _default_modelfile(export_dir: Path, best: GGUFResult) -> tuple[str, str]:
    """`export/Modelfile`: the same as the preferred GGUF's, so `ollama create NAME -f export/Modelfile` works."""
    if not best.modelfile:
        return "", ""
    path = export_dir / "Modelfile"
    _write_text_atomic(path, Path(best.modelfile).read_text())
    return str(path), best.ollama_command.replace(best.modelfile, str(path))


def _run_system_prompt(run: RunDir) -> str | None:
    from .prompts import system_prompt

    try:
        return system_prompt(run.config().data) or None
    except Exception:
        return None


# -- LoRA adapter as GGUF ----------------------------------------------------------------------
def _export_lora(run: RunDir, base: BaseSource, export_dir: Path, say: Progress, verify: bool) -> LoraResult:
    """convert_lora_to_gguf.py on the adapter; checked by loading base f16 GGUF + LoRA in llama.cpp."""
    stem = _slug(run.path.name)
    final = export_dir / f"{stem}-lora-f16.gguf"
    base_dir = _base_dir_for_lora(run, base)
    logs = export_dir / "logs"
    t0 = time.time()
    with _staged(final) as tmp:
        say("converting the LoRA adapter to GGUF", 0.85)
        llama_tools.convert_lora(run.adapter_dir, base_dir, tmp, "f16", logs / "lora.log")
    result = LoraResult(str(final), final.stat().st_size, round(time.time() - t0, 1))
    _read_lora_metadata(final, result)
    result.usage = (f"llama.cpp: --model <base {base.name} GGUF> --lora {final}; "
                    f"Ollama: FROM <base model> + ADAPTER ./{final.name}")
    info = read_merge_info(default_merged_dir(run))
    if verify and info and Path(base_dir, "config.json").is_file() and any(Path(base_dir).glob("*.safetensors")):
        say("checking base + LoRA in llama.cpp", 0.92)
        _verify_lora(final, base_dir, info, export_dir, result)
    elif verify:
        result.notes.append("not checked in llama.cpp: needs a merge report and local base weights")
    return result


def _base_dir_for_lora(run: RunDir, base: BaseSource) -> Path:
    if Path(base.path).is_dir():
        return Path(base.path)
    from .merge import cached_snapshot

    snap = cached_snapshot(base.path)
    if snap is not None:
        return snap
    merged = default_merged_dir(run)
    if (merged / "config.json").is_file():
        return merged  # same config and tokenizer as the base
    raise ExportError(f"the base model {base.name} is not on disk; the LoRA converter needs at least its config.json")


def _read_lora_metadata(path: Path, result: LoraResult) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields
    kind = fields["general.type"].contents() if "general.type" in fields else None
    if kind != "adapter":
        raise ExportError(f"{path.name}: expected a GGUF adapter, got general.type={kind!r}")
    result.alpha = float(fields["adapter.lora.alpha"].contents()) if "adapter.lora.alpha" in fields else None
    result.tensors = len(reader.tensors)


def _verify_lora(lora: Path, base_dir: Path, info: dict[str, Any], export_dir: Path, result: LoraResult) -> None:
    from llama_cpp import Llama

    temp_base = export_dir / f".lora-check-base-f16.gguf.partial"
    try:
        llama_tools.convert_hf(base_dir, temp_base, "f16", export_dir / "logs" / "lora-base.log")
        llm = Llama(model_path=str(temp_base), lora_path=str(lora), n_ctx=1024, seed=0, verbose=False)
        try:
            cases = info.get("prompts", [])
            eos = {llm.token_eos()}
            hits = [compare_to_merged(llama_greedy(llm, c["prompt_ids"], max(len(c["merged_ids"]), 1), eos), c)[0]
                    for c in cases]
        finally:
            llm.close()
        result.identical, result.near_ties, result.prompts = hits.count("identical"), hits.count("near-tie"), len(hits)
    finally:
        temp_base.unlink(missing_ok=True)


# -- Hub push ----------------------------------------------------------------------------------
def push_to_hub(path: str | Path, repo_id: str, token: str, private: bool = True,
                progress: Progress | None = None) -> str:
    """Upload a GGUF file or a folder (e.g. export/merged) to a Hub model repo; returns its URL.

    The token goes only to `HfApi(token=…)`: it is never logged, never written to disk, and is
    scrubbed from error messages.
    """
    from huggingface_hub import HfApi

    path = Path(path)
    say = progress or (lambda msg, frac: None)
    api = HfApi(token=token)
    try:
        say(f"creating {repo_id}", 0.05)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        say(f"uploading {path.name}", 0.1)
        if path.is_dir():
            api.upload_folder(folder_path=str(path), repo_id=repo_id, ignore_patterns=[".*", "*.partial"])
        else:
            api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id)
    except Exception as exc:
        message = str(exc).replace(token, "***") if token else str(exc)
        raise ExportError(f"pushing {path.name} to {repo_id} failed: {message}") from None
    say("uploaded", 1.0)
    return f"https://huggingface.co/{repo_id}"


# -- small helpers -----------------------------------------------------------------------------
def _scaled(progress: Progress, lo: float, hi: float) -> Progress:
    return lambda msg, frac: progress(msg, lo + (hi - lo) * max(0.0, min(1.0, frac)))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "grpo-box-model"


def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _write_json(path: Path, data: Any) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2, default=str))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
