"""Read a data file's column names cheaply, for the Data tab's column-mapping dropdowns.

Only the head of the file is read (the first JSON lines, the CSV header, the Parquet schema),
with no `datasets` import, so an upload answers at once. A file that cannot be read gets a
message in the engine's style ("file, line N: …"); the full check of every row is the preview,
which runs the engine's own reader in a child process.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from grpo_box.errors import UserError
from grpo_box.jsonlines import loads_line, problem as json_problem

SUFFIXES = (".jsonl", ".csv", ".parquet")
HEAD_LINES = 200
PROMPT_GUESSES = ("question", "prompt", "problem", "input", "query", "instruction")
ANSWER_GUESSES = ("answer", "solution", "output", "target", "label", "response")


class DataFileError(UserError, ValueError):
    """The data file cannot be read; the message names the file, the line and what to change."""


def read_columns(path: str | Path) -> list[str]:
    """Column names found in the head of a .jsonl, .csv or .parquet file."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataFileError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; GRPO Box reads "
                            ".jsonl, .csv and .parquet")
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    try:
        columns = {".jsonl": _jsonl, ".csv": _csv, ".parquet": _parquet}[suffix](path)
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from None
    if not columns:
        raise DataFileError(f"{path}: no columns found; the file seems empty")
    return columns


def _jsonl(path: Path) -> list[str]:
    columns: dict[str, None] = {}
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno > HEAD_LINES:
                break
            if not line.strip():
                continue
            try:
                obj = loads_line(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}, line {lineno}: {json_problem(exc)}; "
                                    'each line must be one JSON object, e.g. {"question": "...", "answer": "..."}'
                                    ) from None
            if not isinstance(obj, dict):
                raise DataFileError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            columns.update(dict.fromkeys(obj))
    return list(columns)


def _csv(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle), [])
        except csv.Error as exc:
            raise DataFileError(f"{path}, line 1: not valid CSV ({exc})") from None
    return [name for name in header if name]


def _parquet(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from None


def guess(columns: list[str], current: str, guesses: tuple[str, ...]) -> str:
    """Keep `current` when the file has it, else the first likely name, else the first column."""
    if current in columns:
        return current
    lowered = {c.lower(): c for c in columns}
    for name in guesses:
        if name in lowered:
            return lowered[name]
    return columns[0] if columns else current
