"""What was made from a run, for the Runs tab: its evaluation and its exports, in a few lines.

Read from the run's files only (`eval.json`, `export/export.json`, the merge report), so a run
evaluated or exported by the CLI shows the same; the Evaluate and Export tabs have the details.
"""

from __future__ import annotations

import html
from pathlib import Path

from . import eval_view, export_view


def made_html(run: Path | None) -> str:
    """A short list: evaluation (accuracy base → trained), merge check, exported files and their checks."""
    if run is None or not run.is_dir():
        return ""
    merge = export_view.merge_info(run)
    merged = (f"merged ({merge.get('matches', 0)}/{len(merge.get('prompts') or [])} greedy replies match base + "
              "adapter)") if merge else "not merged yet"
    items = [("Evaluation", eval_view.short_text(eval_view.read(run))), ("Merge", merged),
             ("Exports", export_view.summary_text(run))]
    rows = "".join(f"<li><strong>{name}:</strong> {html.escape(text)}</li>" for name, text in items)
    return f'<ul id="runs-made-list">{rows}</ul>'
