"""What the Export tab (and the Runs tab) draw from a run's export files: no gradio, no model.

`export/export.json` is the engine's `ExportReport` (one record per GGUF with its checks: greedy
parity against the merged model, tokenization, chat template, EOS, a chat reply that stops, the
Modelfile's stop list); `export/merged/grpo_box_merge.json` is the merge's parity report. This
module renders them: the verification table with every check that decides a file's `ok` passed
(green) or failed (red), the merge check, the files to download, each GGUF's `ollama create` line
and its Modelfile.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from grpo_box.export_report import LOSSLESS, TOKENIZER_NOTE, parity_text, replies_agree, size_text
from grpo_box.runs import EXPORT

REPORT = "export.json"
MERGE_INFO = "grpo_box_merge.json"
_PASS = '<td class="check-pass" style="background:#edf7ed;color:#1e4620">{}</td>'
_FAIL = '<td class="check-fail" style="background:#fdecea;color:#5f1010;font-weight:bold">{}</td>'
_INFO = '<td class="check-info">{}</td>'
COLUMNS = ("file", "size", "tokens vs merged HF", "tokenizer", "template", "EOS", "stops at EOS", "Modelfile stops",
           "all passed")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def report(run: Path) -> dict[str, Any]:
    """The run's export.json, keeping only files still on disk ({} when nothing was exported)."""
    data = read_json(run / EXPORT / REPORT)
    if data:
        data["files"] = [f for f in data.get("files") or [] if Path(f.get("path", "")).is_file()]
    return data


def merge_info(run: Path) -> dict[str, Any]:
    return read_json(run / EXPORT / "merged" / MERGE_INFO)


def _check(passed: bool, text: str) -> str:
    return (_PASS if passed else _FAIL).format(html.escape(text))


def file_row(f: dict[str, Any]) -> str:
    """One GGUF's row: each check a coloured cell."""
    name, size = html.escape(Path(f.get("path", "")).name), size_text(int(f.get("size_bytes") or 0))
    if not f.get("verified"):
        cells = [_INFO.format(name), _INFO.format(size), _INFO.format("not checked"), *[_INFO.format("–")] * 4,
                 _check(bool(f.get("modelfile_stops_ok")), "ok" if f.get("modelfile_stops_ok") else "missing EOS"),
                 _check(bool(f.get("ok")), "yes" if f.get("ok") else "no")]
        return "<tr>" + "".join(cells) + "</tr>"
    prompts, same, ties = int(f.get("prompts") or 0), int(f.get("identical") or 0), int(f.get("near_ties") or 0)
    exact = f.get("quant") in LOSSLESS
    parity = parity_text(same, ties, prompts, float(f.get("prefix_agreement") or 0), exact)
    cells = [_INFO.format(name), _INFO.format(size),
             _check(replies_agree(same, ties, prompts), parity) if exact else _INFO.format(parity),
             _tokenizer_cell(f),
             _check(bool(f.get("chat_template_ok")), "same" if f.get("chat_template_ok") else "differs"),
             _check(bool(f.get("eos_ok")), f.get("eos_token") or "?"),
             _check(bool(f.get("chat_stops")), "yes" if f.get("chat_stops") else "runs on"),
             _check(bool(f.get("modelfile_stops_ok")), "ok" if f.get("modelfile_stops_ok") else "missing EOS"),
             _check(bool(f.get("ok")), "yes" if f.get("ok") else "NO")]
    return f'<tr data-ok="{str(bool(f.get("ok"))).lower()}">' + "".join(cells) + "</tr>"


def _tokenizer_cell(f: dict[str, Any]) -> str:
    if "tokenizer_match" not in f:  # a report from before the check was recorded
        return _INFO.format("–")
    return _check(bool(f["tokenizer_match"]), "same" if f["tokenizer_match"] else "differs")


def _tokenizer_notes(files: list[dict[str, Any]]) -> list[str]:
    """The engine records a tokenizer mismatch without a note of its own: say what the red cell means."""
    return [TOKENIZER_NOTE.format(Path(f.get("path", "")).name) for f in files
            if f.get("verified") and f.get("tokenizer_match") is False]


def lora_row(lo: dict[str, Any]) -> str:
    name, size = html.escape(Path(lo.get("path", "")).name), size_text(int(lo.get("size_bytes") or 0))
    if lo.get("identical") is None:
        parity = _INFO.format("not checked")
    else:
        prompts, same, ties = int(lo.get("prompts") or 0), int(lo["identical"]), int(lo.get("near_ties") or 0)
        parity = _check(same + ties == prompts, f"{same}/{prompts} identical, {ties} near-tie (base + LoRA)")
    cells = [_INFO.format(name), _INFO.format(size), parity, *[_INFO.format("–")] * 5,
             _check(bool(lo.get("ok")), "yes" if lo.get("ok") else "NO")]
    return f'<tr data-ok="{str(bool(lo.get("ok"))).lower()}">' + "".join(cells) + "</tr>"


def table_html(data: dict[str, Any]) -> str:
    """The verification table of every exported file, with its notes and warnings under it."""
    files, lora = data.get("files") or [], data.get("lora")
    if not files and not lora:
        return ""
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    rows = [file_row(f) for f in files] + ([lora_row(lora)] if lora else [])
    notes = [n for f in files for n in f.get("notes") or []] + _tokenizer_notes(files)
    notes += [f"warning: {w}" for w in data.get("warnings") or []]
    listed = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f'<table id="export-verification" class="grpo-box-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>' + (f"<ul class='export-notes'>{listed}</ul>" if listed else ""))


def merge_html(info: dict[str, Any]) -> str:
    """The merge's parity check: the merged model's greedy replies against base + adapter."""
    if not info:
        return ""
    prompts = len(info.get("prompts") or [])
    matches, changed = int(info.get("matches") or 0), int(info.get("changed_vs_base") or 0)
    ok = matches == prompts
    colour = "#2e7d32" if ok else "#c62828"
    base = info.get("base", "")
    kind = ("dequantized 4-bit base (lower quality)" if info.get("base_4bit")
            else f"16-bit base ({info.get('dtype', '')})")
    lines = [f'<div id="export-merge-check" style="color:{colour}"><strong>{matches}/{prompts}</strong> greedy '
             f"replies of the merged model match base + adapter ({'match' if ok else 'DIFFER'}); the adapter "
             f"changes {changed} of them against the base model.</div>",
             f"<div>Merged into the {html.escape(kind)} <code>{html.escape(str(base))}</code>.</div>"]
    lines += [f"<div class='grpo-box-warning'>note: {html.escape(w)}</div>" for w in info.get("warnings") or []]
    return "".join(lines)


def downloads(data: dict[str, Any], run: Path) -> list[str]:
    """Every GGUF with its Modelfile, and the LoRA GGUF, that exist, for download links. The shared
    export/Modelfile (what the `ollama create` line uses here) is a copy of one of those, so it is
    listed only when no GGUF has its own."""
    paths = [p for f in data.get("files") or [] for p in (f.get("path"), f.get("modelfile"))]
    own = any(f.get("modelfile") for f in data.get("files") or [])
    paths += [(data.get("lora") or {}).get("path"), None if own else data.get("modelfile")]
    seen = [str(Path(p)) for p in paths if p and Path(p).is_file()]
    return list(dict.fromkeys(seen))


def ollama_commands(data: dict[str, Any]) -> str:
    """One `ollama create` line per exported GGUF, each with its own Modelfile (as in the downloads);
    the shared export/Modelfile's line only for a report from before GGUFs had their own."""
    lines = [f["ollama_command"] for f in data.get("files") or [] if f.get("ollama_command")]
    return "\n".join(lines) or str(data.get("ollama_command") or "")


def modelfile_preview(data: dict[str, Any]) -> tuple[str, str]:
    """(file name, text) of the Modelfile to preview: the first quantized GGUF's own (the one the
    README's example uses; they differ only in FROM), else the first one, else export/Modelfile."""
    files = [f for f in data.get("files") or [] if f.get("modelfile")]
    best = next((f for f in files if f.get("quant") not in LOSSLESS), files[0] if files else None)
    path = best["modelfile"] if best else data.get("modelfile")
    try:
        return (Path(path).name, Path(path).read_text()) if path else ("", "")
    except OSError:
        return "", ""


def summary_text(run: Path) -> str:
    """One line for the Runs tab: the files exported and whether every check passed."""
    data = report(run)
    files = [Path(f["path"]).name for f in data.get("files") or []]
    if data.get("lora") and Path(data["lora"].get("path", "")).is_file():
        files.append(Path(data["lora"]["path"]).name)
    if not files:
        return "nothing exported yet (Export tab)"
    verdict = "every check passed" if data.get("ok") else "some checks FAILED"
    return f"{', '.join(files)}: {verdict}"
