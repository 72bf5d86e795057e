"""One line of a JSON Lines file parsed, and the words users see when it is not JSON.

A line read from a file ends with its newline. `json.loads` places a value missing at the end of
the line (`{"answer": ` cut short) after that newline: "line 2, column 1", which sends the user to
the wrong spot. The line end is stripped first, so the column is where the value is missing. The
data reader, the Data tab's column reader and the dry run's file of completions all use this.
"""

from __future__ import annotations

import json
from typing import Any


def loads_line(line: str) -> Any:
    """The JSON value on `line` (its line end ignored); json.JSONDecodeError when it is not JSON."""
    return json.loads(line.rstrip("\r\n"))


def problem(exc: json.JSONDecodeError) -> str:
    """What is wrong with the line, with the column to look at."""
    return f"not valid JSON ({exc.msg} at column {exc.colno})"
