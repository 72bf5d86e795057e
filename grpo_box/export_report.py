"""What an export produced and how its checks went: the records `export_run` returns.

`GGUFResult` per GGUF file, `LoraResult` for the adapter-only GGUF, `ExportReport` for the whole
export (written to `export/export.json`, printed by `python -m grpo_box export` as a table). Each
record decides its own `ok`: lossless files (f32/f16/bf16) must reproduce the merged model's
greedy tokens up to near-ties (see `gguf_check`), every file must tokenize prompts as the HF
tokenizer does, keep the chat template and EOS, stop at EOS in a chat, and have a Modelfile that
stops on every EOS; quantized files only report how close they stay. The table shows every check
that decides `ok`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .hardware import GIB
from .text_table import text_table

LOSSLESS = ("f32", "f16", "bf16")  # must reproduce the merged model's greedy tokens
TOKENIZER_NOTE = ("{}: llama.cpp tokenizes the check prompts unlike the HF tokenizer, so the GGUF reads prompts "
                  "differently from the trained model")


class ExportError(UserError, RuntimeError):
    """An export problem; the message says what to change."""


class DiskSpaceError(ExportError):
    pass


def replies_agree(identical: int, near_ties: int, prompts: int) -> bool:
    """Every prompt's greedy reply matched the merged model's, or parted from it only at a near-tie."""
    return identical + near_ties == prompts


class _Checked:
    """A record whose `ok` property is part of its JSON form."""

    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}  # type: ignore[call-overload]


@dataclass
class GGUFResult(_Checked):
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
    eos_ok: bool = False  # every HF EOS id ends generation in llama.cpp, and the EOS texts agree
    chat_stops: bool = False  # a chat reply ended at EOS, not at max tokens
    chat_reply: str = ""
    fallback_tensors: str = ""  # "180/272" when K-quant rows did not fit and llama.cpp fell back
    modelfile: str = ""
    modelfile_stops_ok: bool = False  # the Modelfile's PARAMETER stop list holds every EOS token
    ollama_command: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def exact_required(self) -> bool:
        return self.quant in LOSSLESS

    @property
    def ok(self) -> bool:
        """No check failed (the llama.cpp checks count as passed for an unverified file; see `verified`)."""
        if not self.verified:
            return self.modelfile_stops_ok
        parity = replies_agree(self.identical, self.near_ties, self.prompts) if self.exact_required else True
        return (parity and self.chat_template_ok and self.eos_ok and self.chat_stops and self.tokenizer_match
                and self.modelfile_stops_ok)


@dataclass
class LoraResult(_Checked):
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
        return self.tensors > 0 and (
            self.identical is None or replies_agree(self.identical, self.near_ties, self.prompts))


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
        header = ("file", "size", "tokens vs merged HF", "tokenizer", "template", "EOS", "stops", "Modelfile", "ok")
        rows = [header] + [_row(f) for f in self.files]
        if self.lora:
            lo = self.lora
            rows.append((Path(lo.path).name, size_text(lo.size_bytes),
                         "-" if lo.identical is None else
                         f"{lo.identical}/{lo.prompts} identical, {lo.near_ties} near-tie (base+LoRA)",
                         "-", "-", "-", "-", "-", "yes" if lo.ok else "NO"))
        lines = [text_table(rows, rule=True), ""]
        lines += [f"ollama: {f.ollama_command}" for f in self.files if f.ollama_command]
        if self.lora and self.lora.usage:
            lines.append(f"LoRA: {self.lora.usage}")
        lines += [f"note: {n}" for f in self.files for n in f.notes]
        lines += [f"note: {TOKENIZER_NOTE.format(Path(f.path).name)}" for f in self.files
                  if f.verified and not f.tokenizer_match]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _row(f: GGUFResult) -> tuple[str, ...]:
    if not f.verified:
        return (Path(f.path).name, size_text(f.size_bytes), "not checked", "-", "-", "-", "-",
                _yes(f.modelfile_stops_ok), "-")
    agree = parity_text(f.identical, f.near_ties, f.prompts, f.prefix_agreement, f.exact_required)
    return (Path(f.path).name, size_text(f.size_bytes), agree, _yes(f.tokenizer_match), _yes(f.chat_template_ok),
            f.eos_token or "?", "yes" if f.chat_stops else "NO", _yes(f.modelfile_stops_ok), "yes" if f.ok else "NO")


def parity_text(identical: int, near_ties: int, prompts: int, prefix: float, exact: bool) -> str:
    """The greedy comparison with the merged model in words. A quantized file is expected to part
    from it; its share of tokens reproduced before the first difference is what to read there."""
    text = f"{identical}/{prompts} identical" + (f", {near_ties} near-tie" if near_ties else "")
    if replies_agree(identical, near_ties, prompts):
        return text
    if exact:
        return f"{text} ({prefix:.0%} prefix)"
    return f"{prefix:.0%} of tokens match before the first difference (quantized: differences expected)"


def _yes(passed: bool) -> str:
    return "ok" if passed else "BAD"


def size_text(n: int) -> str:
    """Bytes as "123 MB" or "1.23 GB"."""
    return f"{n / 2**20:.0f} MB" if n < GIB else f"{n / GIB:.2f} GB"
