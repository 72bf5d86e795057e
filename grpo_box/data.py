"""Dataset loading: turn `DataConfig` into train and held-out `datasets.Dataset`s for GRPO.

Sources are a built-in task (`task:arithmetic`, `task:countdown?difficulty=2`), a local
`.jsonl` / `.csv` / `.parquet` file, or a Hugging Face Hub dataset id (`openai/gsm8k` with
subset `main`). Whatever the source, the rows come out alike, in TRL's conversational format:

- `prompt`: chat messages, system (from the template, see `prompts.py`) then user;
- `answer`: the reference, normalised by `rewards.reference_answer` (the one normaliser the
  rewards use too: GSM8K's `#### 72` becomes `72`);
- `question`: the raw question text;
- `row_origin`: where the row came from (`qa.jsonl, line 3`; `qa.csv, line 4` counting the
  header; `qa.parquet, row 2`; `task:sort, row 5`), so that later checks name the real line;
- any other source columns, which TRL hands to the reward functions as keyword arguments. Task
  rows add `task` (so `correctness` uses the task's own checker) and e.g. `numbers` for countdown.

Bad data fails early with a `DataError` that names the file and line and what to change, because
a run that dies at step 0 inside the trainer tells a user nothing. The held-out rows, used for
before/after accuracy, never share a question with the training rows.
"""

from __future__ import annotations

import csv
import decimal
import json
import math
import numbers
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import datasets

from . import tasks
from .config import DataConfig, RunConfig, column_clash
from .errors import UserError
from .jsonlines import loads_line, problem as json_problem
from .chat_format import apply_run_format, prompt_text
from .prompts import PREVIEW_ROWS, build_messages, preamble
from .rewards.answers import reference_answer
from .rewards.registry import RESERVED_COLUMNS

Row = dict[str, Any]
Located = tuple[str, Row]  # (where the row came from, e.g. "qa.jsonl, line 3"; the raw row)

ORIGIN = "row_origin"
SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".parquet")
# Suffixes that mark a source as a file name rather than a Hub id, even when the file is missing.
_FILE_SUFFIXES = {".json", ".ndjson", ".txt", ".tsv", ".xlsx", ".xls", ".arrow", ".pq", ".gz", ".zip",
                  ".yaml", ".yml", ".md", *SUPPORTED_SUFFIXES}
# Column names with a meaning to TRL's reward call or to GRPO Box; source columns so named are dropped.
_RESERVED = {*RESERVED_COLUMNS, "question", "answer", ORIGIN}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class DataError(UserError, ValueError):
    """A data problem; the message names the file or source, the line or row, and what to change."""


# -- public API -----------------------------------------------------------------------------------
def load_rows(cfg: DataConfig | RunConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held_out) for a data config; held_out has `eval_size` rows, train at least 1."""
    cfg = _data_cfg(cfg)
    if cfg.size < 1:
        raise DataError(f"data.size={cfg.size}: use at least 1 row")
    records = [_record(row, preamble(cfg)) for row in read_source(cfg)]
    try:
        dataset = datasets.Dataset.from_list(records)
    except Exception as exc:  # pyarrow raises several types for mixed column types
        raise _mixed_types_error(records, cfg.source, exc) from exc
    return split_rows(dataset, cfg.eval_size, cfg.seed)


def read_source(cfg: DataConfig) -> list[Row]:
    """Rows `{question, answer, row_origin, ...extras}` from the configured source, at most `size`."""
    source = cfg.source.strip()
    if source.startswith("task:"):
        return _read_task(source, cfg)
    path = local_source_path(source)
    if path is None:
        return _map_columns(_read_hub(cfg), cfg, source)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; point data.source at a .jsonl, .csv or .parquet file in it")
    return _map_columns(_read_file(path, cfg.size), cfg, str(path))


def local_source_path(source: str) -> Path | None:
    """The file (or folder) `data.source` names, or None for a built-in task or a Hub dataset id.

    A source is local when it exists, has a data-file suffix, or looks like a path (`./x`, `/x`,
    `a/b/c`); `openai/gsm8k` is a Hub id unless a folder of that name is here.
    """
    source = source.strip()
    if source.startswith("task:"):
        return None
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in SUPPORTED_SUFFIXES or _looks_like_path(source):
        return path
    return None


def split_rows(dataset: datasets.Dataset, eval_size: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Deterministic (train, held_out) split; held-out questions are removed from train.

    `eval_size` is capped at len - 1 so that train keeps a row. Removing repeats of held-out
    questions matters for small task pools (single-digit addition has 100 problems); it is skipped
    only when it would leave train empty.
    """
    n = len(dataset)
    k = max(0, min(eval_size, n - 1))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    questions = dataset["question"]
    held = sorted(order[:k])
    held_questions = {questions[i] for i in held}
    rest = sorted(order[k:])
    train = [i for i in rest if questions[i] not in held_questions] or rest
    return dataset.select(train), dataset.select(held)


def check_prompt_lengths(dataset: datasets.Dataset, tokenizer: Any, max_prompt_length: int) -> int:
    """Raise DataError if a prompt is over `max_prompt_length` tokens; return the longest count.

    TRL would otherwise truncate such prompts from the left, silently cutting the system prompt.
    The message names the first such row by its file and line (`row_origin`).
    """
    counts = [count_prompt_tokens(tokenizer, row["prompt"]) for row in dataset]
    too_long = [i for i, c in enumerate(counts) if c > max_prompt_length]
    if too_long:
        first, longest = too_long[0], max(counts)
        where = dataset[first][ORIGIN] if ORIGIN in dataset.column_names else f"row {first + 1}"
        raise DataError(
            f"{where}: the prompt is {counts[first]} tokens, over grpo.max_prompt_length={max_prompt_length} "
            f"({len(too_long)} of {len(counts)} rows are; the longest is {longest}): raise "
            f"grpo.max_prompt_length to at least {longest} (and model.max_seq_length with it), "
            "or shorten the system prompt or the long questions"
        )
    return max(counts, default=0)


def count_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a prompt as the trainer builds it: chat template plus the assistant header."""
    return len(tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


def preview(cfg: DataConfig | RunConfig, tokenizer: Any, n: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    """The first `n` training prompts exactly as the model sees them, with token counts and answers.

    The tokenizer's chat template gets the run's one-shot turn and prefill, as training's does.
    """
    train, _ = load_rows(cfg)
    apply_run_format(tokenizer, _data_cfg(cfg))
    shown = []
    for row in train.select(range(min(n, len(train)))):
        text = prompt_text(tokenizer, row["prompt"])
        shown.append({
            "question": row["question"],
            "text": text,
            "tokens": count_prompt_tokens(tokenizer, row["prompt"]),
            "answer": row["answer"],
            "origin": row[ORIGIN],
        })
    return shown


# -- sources --------------------------------------------------------------------------------------
def _data_cfg(cfg: DataConfig | RunConfig) -> DataConfig:
    return cfg.data if isinstance(cfg, RunConfig) else cfg


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or Path(source).suffix.lower() in _FILE_SUFFIXES
    )


def _read_task(source: str, cfg: DataConfig) -> list[Row]:
    name, _, query = source[len("task:"):].partition("?")
    name = name.strip()
    params = {key: _param_value(value) for key, value in parse_qsl(query, keep_blank_values=True)}
    try:
        rows = tasks.generate(name, cfg.size, cfg.seed, **params)
    except tasks.TaskError as exc:
        raise DataError(f"data.source={source!r}: {exc}") from exc
    return [{**row, "task": name, ORIGIN: f"{source}, row {i}"} for i, row in enumerate(rows, 1)]


def _param_value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def _read_file(path: Path, limit: int) -> list[Located]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; GRPO Box reads "
            ".jsonl, .csv and .parquet (a .json array converts to JSON Lines: one object per line)"
        )
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; set data.source to an existing .jsonl, .csv or .parquet file "
            f"(relative paths start from {os.getcwd()})"
        )
    reader = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
    try:
        rows = reader(path, limit)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from exc
    if not rows:
        raise DataError(f"{path}: the file has no rows; add at least one row with a question and an answer")
    return rows


def _read_jsonl(path: Path, limit: int) -> list[Located]:
    rows: list[Located] = []
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if len(rows) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = loads_line(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: {json_problem(exc)}; "
                    'each line must be one JSON object, e.g. {"question": "...", "answer": "..."}'
                ) from exc
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            rows.append((where, obj))
    return rows


def _read_csv(path: Path, limit: int) -> list[Located]:
    rows: list[Located] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
            for row in reader:
                if len(rows) >= limit:
                    break
                # line_num is the record's last line; a quoted cell may span several
                start = reader.line_num - sum(v.count("\n") for v in row.values() if isinstance(v, str))
                cells = {k: v for k, v in row.items() if k is not None}  # None holds surplus cells
                rows.append((f"{path}, line {start}", cells))
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    if not rows and header:
        raise DataError(f"{path}: the file has a header ({', '.join(header)}) but no rows")
    return rows


def _read_parquet(path: Path, limit: int) -> list[Located]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    return [(f"{path}, row {i}", row) for i, row in enumerate(table.slice(0, limit).to_pylist(), 1)]


def _read_hub(cfg: DataConfig) -> list[Located]:
    source = cfg.source.strip()
    if not _HUB_ID.fullmatch(source):
        raise DataError(
            f"data.source={source!r} is not a built-in task (task:<name>, one of {', '.join(tasks.list_tasks())}), "
            "a .jsonl/.csv/.parquet file, or a Hub dataset id like openai/gsm8k"
        )
    where = f"Hub dataset {source!r} (data.subset={cfg.subset!r}, data.split={cfg.split!r})"
    try:
        loaded = datasets.load_dataset(source, cfg.subset, split=cfg.split or None)
    except Exception as exc:  # network, auth, missing id/subset/split all surface as different types
        raise DataError(
            f"could not load {where}: {type(exc).__name__}: {exc}. Loading from the Hub needs network "
            f"access (or a copy in the local Hugging Face cache); check the id at "
            f"https://huggingface.co/datasets/{source} and the subset and split names"
        ) from exc
    if not isinstance(loaded, datasets.Dataset):
        splits = ", ".join(loaded) if isinstance(loaded, Mapping) else "?"
        raise DataError(f"{where}: pick one split with data.split (available: {splits})")
    if len(loaded) == 0:
        raise DataError(f"{where}: the split has no rows")
    rows = loaded.select(range(min(cfg.size, len(loaded)))).to_list()
    return [(f"Hub dataset {source}, split {cfg.split}, row {i}", row) for i, row in enumerate(rows, 1)]


# -- rows -----------------------------------------------------------------------------------------
def _map_columns(raw: list[Located], cfg: DataConfig, origin: str) -> list[Row]:
    """Rename `prompt_column`/`answer_column` to question/answer, checking every row has both."""
    columns = list(dict.fromkeys(key for _, row in raw for key in row))
    for setting, column in (("prompt_column", cfg.prompt_column), ("answer_column", cfg.answer_column)):
        if column not in columns:
            raise DataError(
                f"{origin}: no column {column!r} (data.{setting}); columns found: {', '.join(columns)}. "
                f"Set data.{setting} to one of them"
            )
    clash = column_clash(cfg.prompt_column, cfg.answer_column, columns)
    if clash:
        raise DataError(f"{origin}: {clash}")
    extras = [c for c in columns if c not in _RESERVED and c not in (cfg.prompt_column, cfg.answer_column)]
    return [_mapped_row(where, row, cfg, extras) for where, row in raw]


def _mapped_row(where: str, row: Row, cfg: DataConfig, extras: list[str]) -> Row:
    question, answer = row.get(cfg.prompt_column), row.get(cfg.answer_column)
    if _is_messages(question):
        question = _text_messages(where, cfg.prompt_column, question)
    else:
        question = _plain_value(where, cfg.prompt_column, "prompt_column", question, "question")
        question = "" if question is None else str(question).strip()
    answer = reference_answer(_plain_value(where, cfg.answer_column, "answer_column", answer, "answer"))
    for setting, column, value in (("prompt_column", cfg.prompt_column, question),
                                   ("answer_column", cfg.answer_column, answer)):
        if not value:
            raise DataError(f"{where}: empty {column!r} (data.{setting}); fill it in or remove that row")
    return {"question": question, "answer": answer, ORIGIN: where, **{c: row.get(c) for c in extras}}


def _plain_value(where: str, column: str, setting: str, value: Any, what: str) -> Any:
    """A question or reference answer as given, refused unless it is text or a finite number.

    Anything else would reach the rewards as its Python text and never match: a list as "[4, 5]",
    bytes as "b'ab'", a missing number as "nan", a true/false value as "True", an object as JSON.
    A list of exactly one text or number (`["4"]`, `[4]`: some datasets store each answer so) is
    taken as that value, since it can mean nothing else; a longer list is refused, because which
    of its entries is the answer is the user's call. None stays None (reported as empty).
    """
    if isinstance(value, (list, tuple)) and len(value) == 1 and not isinstance(value[0], (list, tuple, Mapping)):
        value = value[0]
    if value is None or isinstance(value, str):
        return value
    shown = f"{value!r:.60}"
    if isinstance(value, bool):
        problem = f"a true/false value ({shown})"
    elif isinstance(value, (numbers.Real, decimal.Decimal)):
        if math.isfinite(value):
            return value
        problem = "NaN, not a number (an empty numeric cell?)" if value != value else f"{value}, not a finite number"
    elif isinstance(value, (bytes, bytearray)):
        problem = f"bytes ({shown})"
    elif isinstance(value, (list, tuple)):
        problem = f"a list of {len(value)} item{'s' * (len(value) != 1)} ({shown})" if value else "an empty list"
    elif isinstance(value, Mapping):
        problem = f"an object ({shown})"
    else:
        problem = f"a {type(value).__name__} ({shown})"
    raise DataError(f"{where}: column {column!r} (data.{setting}) holds {problem}; give a plain text or number {what}")


def _text_messages(where: str, column: str, messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages with text content; content given as a list of text parts is joined into text.

    OpenAI-style `[{"type": "text", "text": "..."}]` content is common in chat datasets. A part
    of another type (an image) is refused: the models trained here read text only.
    """
    out = []
    for i, message in enumerate(messages, 1):
        content = message["content"]
        if isinstance(content, (list, tuple)):
            kinds = [p.get("type", "text") if isinstance(p, Mapping) else type(p).__name__ for p in content]
            other = next((k for k, p in zip(kinds, content) if not (isinstance(p, str) or
                          (k == "text" and isinstance(p, Mapping) and isinstance(p.get("text"), str)))), None)
            if other is not None:
                raise DataError(f"{where}: column {column!r}, message {i}: its content holds a part of type "
                                f"{other!r}; only text can be trained on here: give the content as text")
            content = "".join(p if isinstance(p, str) else p["text"] for p in content)
        elif not isinstance(content, str):
            raise DataError(f"{where}: column {column!r}, message {i}: its content is {content!r:.60} "
                            f"({type(content).__name__}); give the message content as text")
        if not isinstance(message["role"], str):
            raise DataError(f"{where}: column {column!r}, message {i}: role {message['role']!r:.40} must be "
                            "text such as 'system', 'user' or 'assistant'")
        out.append({**message, "content": content})
    return out


def _record(row: Row, before: list[dict[str, str]]) -> Row:
    """A dataset row: chat `prompt`, raw `question`, reference `answer`, then origin and extras.

    `before` is the run's preamble (system prompt, one-shot turn). A source row that holds a whole
    conversation keeps its own system message, and the one-shot turn goes after it.
    """
    question = row["question"]
    if _is_messages(question):  # the source already holds a conversation
        messages = [dict(m) for m in question]
        own_system = messages[:1] if messages[0].get("role") == "system" else []
        system = own_system or [m for m in before if m["role"] == "system"]
        shots = [m for m in before if m["role"] != "system"]
        messages = system + shots + messages[len(own_system):]
        question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    else:
        messages = build_messages(question, before)
    return {"prompt": messages, "answer": row["answer"], "question": question,
            **{k: v for k, v in row.items() if k not in ("question", "answer")}}


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value))


def _mixed_types_error(records: list[Row], source: str, exc: Exception) -> DataError:
    """Name the column and the first row whose value cannot join the earlier rows' type."""
    for column in dict.fromkeys(key for record in records for key in record):
        values = [record.get(column) for record in records]
        bad = _first_unconvertible(values)
        if bad is not None:
            first = next(i for i, v in enumerate(values) if v is not None)
            if first == bad:  # the value does not agree with itself, e.g. a list of numbers and text
                return DataError(
                    f"{records[bad][ORIGIN]}: column {column!r} holds {_kind(values[bad])} whose items are of "
                    f"different types ({values[bad]!r:.60}); make them one type, or remove that column"
                )
            return DataError(
                f"{records[bad][ORIGIN]}: column {column!r} holds {_kind(values[bad])} ({values[bad]!r:.60}), "
                f"but {records[first][ORIGIN]} holds {_kind(values[first])} ({values[first]!r:.60}); "
                f"make every {column!r} value the same type, or remove that column"
            )
    return DataError(f"{source}: the rows could not be put in one table ({exc}); "
                     "make every extra column hold the same type in every row, or remove it")


def _first_unconvertible(values: list[Any]) -> int | None:
    """Index of the first value that breaks pyarrow's type for the column, or None if none does.

    A prefix that fails stays failing when it grows, so a binary search finds the first row.
    """
    import pyarrow as pa

    def converts(n: int) -> bool:
        try:
            pa.array(values[:n])
            return True
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return False

    if converts(len(values)):
        return None
    lo, hi = 1, len(values)  # converts(lo - 1) holds, converts(hi) fails
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if converts(mid) else (lo, mid)
    return lo - 1


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a true/false value"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
