"""Export a trained run to GGUF for llama.cpp / Ollama / Open WebUI, and check every file.

Steps (`export_run`): find the adapter (`merge.require_adapter`: the one chat and evaluation
load, adapter/ or a newer checkpoint), check the converter and the architecture; check free disk
space against an estimate of every output; merge the LoRA into the 16-bit base if the run has no
current merge (`grpo_box.merge`); convert with llama.cpp's `convert_hf_to_gguf.py` to f16 / bf16
/ q8_0 / f32; quantize K-quants and the rest with `llama_cpp.llama_model_quantize`
(`grpo_box.llama_tools`); optionally convert the adapter alone with `convert_lora_to_gguf.py`.
Every file is written under a temporary name in `<run>/export/` and the files of one export are
renamed into place together, only once all of them are complete, so a failed or interrupted
export never damages an earlier one (files or `export.json`).

Every GGUF is then loaded with llama-cpp-python and checked against the merged model
(`gguf_check`): greedy parity (exact up to near-ties for f16/bf16/f32, reported agreement for
quantized files), chat template, EOS, and a chat reply that stops at EOS. The records it fills
live in `export_report`; `hub.push_to_hub` uploads results when the user gives a token.

Next to each GGUF goes an Ollama Modelfile (`modelfile`). Ollama does not run Jinja chat
templates; its TEMPLATE is a Go text/template, so for ChatML (Qwen, SmolLM, …) and Llama-3 models we
write the Go equivalent, including the HF template's default system prompt, and keep it only if it
renders like the HF template on probe conversations. Other templates get a Modelfile without
TEMPLATE and a note (Ollama then picks a built-in template matching the GGUF's chat template).
The Modelfile's stop list is read back and checked against every EOS of the model.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from math import prod
from pathlib import Path
from typing import Any

from . import llama_tools
from .export_report import LOSSLESS, DiskSpaceError, ExportError, ExportReport, GGUFResult, LoraResult, size_text
from .gguf_check import compare_to_merged, llama_greedy, stop_ids, verify_gguf
from .hub import push_to_hub
from .merge import (
    NoAdapterError,
    UnsupportedArchitectureError,
    default_merged_dir,
    locate_run_base,
    merge_with_report,
    merged_is_current,
    read_merge_info,
    require_adapter,
    run_preamble,
)
from .modelfile import (
    modelfile_text,
    parse_stops,
    render_modelfile_template,
    stop_tokens,
    translate_template,
)
from .models import BaseSource, cached_snapshot
from .progress import Progress
from .runs import EXPORT, RunDir, free_bytes, open_run, write_text_atomic

__all__ = [
    "DiskSpaceError", "ExportError", "ExportReport", "GGUFResult", "LoraResult", "NoAdapterError",
    "UnsupportedArchitectureError", "estimate_sizes", "export_run", "find_gguf", "free_bytes",
    "modelfile_text", "push_to_hub", "render_modelfile_template", "translate_template", "verify_gguf",
]

REPORT = "export.json"
# Approximate bits per weight of each output type (llama.cpp's own tables, rounded up).
BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.6, "q5_0": 5.5,
    "q5_1": 6.0, "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q4_1": 5.0, "q3_k_l": 4.3, "q3_k_m": 3.9,
    "q3_k_s": 3.5, "q2_k": 3.4,
}
_MARGIN_BYTES = 256 * 2**20
DEFAULT_QUANTS = ("f16", "q4_k_m")  # lossless 16-bit, and the common 4-bit K-quant


# -- public API -----------------------------------------------------------------------------------
def export_run(run_dir: str | Path, quants: list[str] | tuple[str, ...] = DEFAULT_QUANTS, lora: bool = False,
               progress: Progress | None = None, *, allow_4bit_merge: bool = False, download_base: bool = False,
               verify: bool = True) -> ExportReport:
    """Merge (if needed), convert, quantize and verify; returns the report (also in export/export.json)."""
    say = progress or (lambda msg, frac: None)
    start = time.time()
    run = open_run(run_dir)
    adapter = require_adapter(run)
    quants = normalize_quants(quants)
    if not quants and not lora:
        raise ExportError("nothing to export: give at least one quantization (e.g. f16, q4_k_m) or lora=True")
    say("checking converter, architecture and disk space", 0.0)
    base = locate_run_base(run, allow_4bit_merge=allow_4bit_merge, download_base=download_base)
    check_convertible(base)
    export_dir = run.path / EXPORT
    export_dir.mkdir(parents=True, exist_ok=True)
    need_merge = bool(quants) and not merged_is_current(run)
    check_disk(export_dir, estimate_sizes(base, quants, need_merge, lora))
    report = ExportReport(run.path.name, str(export_dir), None, converter=_converter_info())
    try:
        if quants:
            _export_full(run, base, quants, need_merge, report, say, verify, allow_4bit_merge, download_base)
        if lora:
            report.lora = _export_lora(run, adapter, base, export_dir, say, verify)
    except BaseException as exc:
        report.warnings.append(f"the export stopped before all checks ran ({type(exc).__name__}: {exc})")
        raise
    finally:
        # Files already renamed into place must be described by export.json, even if a later step failed.
        if report.files or report.lora:
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


# -- checks before any work -----------------------------------------------------------------------
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
    snap = cached_snapshot(base.path)
    return json.loads((snap / "config.json").read_text()) if snap is not None else {}


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
        parts = ", ".join(f"{k} {size_text(v)}" for k, v in sizes.items())
        raise DiskSpaceError(
            f"not enough free disk space in {export_dir}: the export needs about {size_text(need)} ({parts}, plus margin) "
            f"but only {size_text(free)} is free. Free some space, or export fewer/smaller files (e.g. quants=['q4_k_m'])"
        )


def _converter_info() -> dict[str, Any]:
    return {"llama_cpp_python": llama_tools.llama_cpp_version(), "script": str(llama_tools.ensure_converter()),
            "gguf": llama_tools.gguf_versions()}


# -- full-model export ----------------------------------------------------------------------------
def _export_full(run: RunDir, base: BaseSource, quants: list[str], need_merge: bool, report: ExportReport,
                 say: Progress, verify: bool, allow_4bit_merge: bool, download_base: bool) -> None:
    merged = default_merged_dir(run)
    if need_merge:
        merge_with_report(run.path, merged, _scaled(say, 0.02, 0.3), allow_4bit_merge=allow_4bit_merge,
                          download_base=download_base)
    report.merged_dir = str(merged)
    check_architecture_supported(_read_json(merged / "config.json", {}), merged)
    info = read_merge_info(merged) or {}
    report.warnings += info.get("warnings", [])
    stem = _slug(run.path.name)
    export_dir = run.path / EXPORT
    produced = _produce_all(merged, export_dir, stem, quants, _scaled(say, 0.3, 0.8))
    report.files = [GGUFResult(quant, str(path), path.stat().st_size, seconds, fallback_tensors=_fallbacks(log))
                    for quant, path, seconds, log in produced]
    for i, result in enumerate(report.files):
        path = Path(result.path)
        if verify:
            say(f"verifying {path.name} in llama.cpp", 0.8 + 0.15 * i / len(produced))
            verify_gguf(path, info, merged, result)
        _attach_modelfile(run, merged, path, info, result)
    best = next((f for f in report.files if f.quant not in LOSSLESS), report.files[0])
    report.modelfile, report.ollama_command = _default_modelfile(export_dir, best)


def _produce_all(merged: Path, export_dir: Path, stem: str, quants: list[str],
                 say: Progress) -> list[tuple[str, Path, float, Path]]:
    """Convert / quantize each requested type; returns (quant, path, seconds, log) per file.

    All or nothing: every file is written under a temporary name and renamed into place only once
    all of them are done, so a failure at the last quant leaves the earlier export (files and
    export.json) exactly as it was.
    """
    logs = export_dir / "logs"
    staged: list[tuple[str, Path, Path, float, Path]] = []  # quant, temporary, final, seconds, log
    source16: Path | None = None
    temp16: Path | None = None
    try:
        for i, quant in enumerate(quants):
            step = _scaled(say, i / len(quants), (i + 1) / len(quants))
            final = export_dir / f"{stem}-{quant}.gguf"
            tmp, log, t0 = _partial(final), logs / f"{quant}.log", time.time()
            tmp.unlink(missing_ok=True)
            staged.append((quant, tmp, final, 0.0, log))
            if quant in llama_tools.CONVERTER_TYPES:
                step(f"converting to {quant}", 0.0)
                _convert(merged, tmp, quant, log, step)
                source16 = tmp if quant in ("f16", "bf16") and source16 is None else source16
            else:
                if source16 is None:
                    temp16 = export_dir / f".{stem}-intermediate-f16.gguf.partial"
                    step("converting to f16 (temporary, for quantizing)", 0.0)
                    # the first half of this file's share: quantizing is the second (progress never goes back)
                    _convert(merged, temp16, _intermediate_type(merged), logs / "intermediate.log",
                             _scaled(step, 0.0, 0.5))
                    source16 = temp16
                step(f"quantizing to {quant}", 0.5)
                _quantize(source16, tmp, quant, log)
            _check_written(tmp, final)
            staged[-1] = (quant, tmp, final, round(time.time() - t0, 1), log)
        for _, tmp, final, _, _ in staged:
            os.replace(tmp, final)
        return [(quant, final, seconds, log) for quant, _, final, seconds, log in staged]
    finally:
        for _, tmp, _, _, _ in staged:
            tmp.unlink(missing_ok=True)
        if temp16 is not None:
            temp16.unlink(missing_ok=True)


def _convert(model_dir: Path, outfile: Path, outtype: str, log: Path, progress: Progress) -> None:
    llama_tools.convert_hf(model_dir, outfile, outtype, log, progress)


def _quantize(src: Path, dst: Path, quant: str, log: Path) -> None:
    llama_tools.quantize(src, dst, quant, log)


def _intermediate_type(merged: Path) -> str:
    dtype = str(_read_json(merged / "config.json", {}).get("dtype", ""))
    return "bf16" if dtype == "bfloat16" else "f16"


def _partial(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _check_written(tmp: Path, final: Path) -> None:
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise ExportError(f"{final.name}: the converter reported success but wrote nothing")


@contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it over `final` only if the block succeeds."""
    tmp = _partial(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        _check_written(tmp, final)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _fallbacks(log: Path) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    match = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", text)
    return f"{match.group(1)}/{match.group(2)}" if match else ""


# -- Ollama Modelfile -----------------------------------------------------------------------------
def _attach_modelfile(run: RunDir, merged: Path, gguf: Path, merge_info: dict[str, Any], result: GGUFResult) -> None:
    """Write the GGUF's Modelfile, then read its stop list back and check it against the model's stops."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    translation = translate_template(tokenizer)
    if translation.template is None:
        result.notes.append(f"Modelfile without TEMPLATE: {translation.note}. Ollama then picks a built-in template "
                            f"by matching the GGUF's chat template; check a reply in Ollama, or add a TEMPLATE by hand")
    eos_ids = merge_info.get("eos_ids", [])
    path = gguf.with_suffix(".Modelfile")
    text = modelfile_text(gguf.name, translation.template, stop_tokens(tokenizer, translation.chat_format, eos_ids),
                          run_preamble(run))
    write_text_atomic(path, text)
    result.modelfile = str(path)
    result.ollama_command = f"ollama create {_slug(run.path.name)}:{result.quant} -f {path}"
    _check_modelfile_stops(path, tokenizer, eos_ids, result)


def _check_modelfile_stops(path: Path, tokenizer: Any, eos_ids: list[int], result: GGUFResult) -> None:
    """Ollama must stop on every token the HF model stops on (the generation config may list several)."""
    written = parse_stops(path.read_text())
    needed = [tokenizer.convert_ids_to_tokens(int(i)) for i in eos_ids] or [tokenizer.eos_token]
    missing = [s for s in needed if s not in written]
    result.modelfile_stops_ok = not missing
    if missing:
        result.notes.append(f"{path.name}: PARAMETER stop lacks {missing}, where the model ends its reply")


def _default_modelfile(export_dir: Path, best: GGUFResult) -> tuple[str, str]:
    """`export/Modelfile`: the same as the preferred GGUF's, so `ollama create NAME -f export/Modelfile` works."""
    if not best.modelfile:
        return "", ""
    path = export_dir / "Modelfile"
    write_text_atomic(path, Path(best.modelfile).read_text())
    return str(path), best.ollama_command.replace(best.modelfile, str(path))


# -- LoRA adapter as GGUF -------------------------------------------------------------------------
def _export_lora(run: RunDir, adapter: Path, base: BaseSource, export_dir: Path, say: Progress,
                 verify: bool) -> LoraResult:
    """convert_lora_to_gguf.py on the adapter; checked by loading base f16 GGUF + LoRA in llama.cpp."""
    stem = _slug(run.path.name)
    final = export_dir / f"{stem}-lora-f16.gguf"
    base_dir = _base_dir_for_lora(run, base)
    logs = export_dir / "logs"
    t0 = time.time()
    with _staged(final) as tmp:
        say("converting the LoRA adapter to GGUF", 0.85)
        llama_tools.convert_lora(adapter, base_dir, tmp, "f16", logs / "lora.log")
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

    temp_base = export_dir / ".lora-check-base-f16.gguf.partial"
    try:
        llama_tools.convert_hf(base_dir, temp_base, "f16", export_dir / "logs" / "lora-base.log")
        llm = Llama(model_path=str(temp_base), lora_path=str(lora), n_ctx=1024, seed=0, verbose=False,
                    n_gpu_layers=llama_tools.gpu_layers())
        try:
            cases = info.get("prompts", [])
            eos = stop_ids(llm, info)
            hits = [compare_to_merged(llama_greedy(llm, c["prompt_ids"], max(len(c["merged_ids"]), 1), eos), c)[0]
                    for c in cases]
        finally:
            llm.close()
        result.identical, result.near_ties, result.prompts = hits.count("identical"), hits.count("near-tie"), len(hits)
    finally:
        temp_base.unlink(missing_ok=True)


# -- small helpers --------------------------------------------------------------------------------
def _scaled(progress: Progress, lo: float, hi: float) -> Progress:
    return lambda msg, frac: progress(msg, lo + (hi - lo) * max(0.0, min(1.0, frac)))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "grpo-box-model"


def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
