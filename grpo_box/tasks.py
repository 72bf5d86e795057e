"""Built-in procedural tasks: problems generated on the spot, with answers a program can check.

They let GRPO Box train with no download at all (the default demo is `task:arithmetic`), and they
scale from trivial to hard with a `difficulty` level. Difficulty 1 is chosen so that a 135M
instruct model can already solve some problems: GRPO only learns when some completions in a group
score better than others, so a task the base model never solves gives no signal at all.

Every generator is deterministic for a seed, returns rows `{question, answer, ...}` with `answer`
a string, and prefers distinct questions until its pool runs out. `check_answer` says whether a
predicted answer is right for a row: countdown accepts any valid expression (`verify_countdown`),
sort wants exactly the sorted list, and the number tasks compare with math-verify like any
dataset answer. The `correctness` reward and evaluation call it for rows with a `task` column.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping

from .errors import UserError

Row = dict[str, Any]
_MAX_TRIES = 2000  # redraws for one row before the pool counts as spent and repeats are accepted


class TaskError(UserError, ValueError):
    """An unknown task or parameter, or a task row without what its checker needs; the message says what."""


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    example: str
    max_difficulty: int
    make: Callable[[random.Random, int], Row]  # one row for (rng, difficulty)
    # (predicted answer, row) -> correct?; None: the answer is one number, compared by math-verify
    check: Callable[[str, Mapping[str, Any]], bool] | None = None

    def generate(self, n: int, seed: int = 0, difficulty: int = 1) -> list[Row]:
        """`n` rows, the same for the same (seed, difficulty)."""
        if not isinstance(difficulty, int) or not 1 <= difficulty <= self.max_difficulty:
            raise TaskError(
                f"task {self.name}: difficulty={difficulty!r} is out of range; use 1 to {self.max_difficulty}"
            )
        rng = random.Random(f"{self.name}:{seed}:{difficulty}")  # str seeds are stable across runs
        return _distinct_rows(n, lambda: self.make(rng, difficulty))


def _distinct_rows(n: int, draw: Callable[[], Row]) -> list[Row]:
    """Draw rows, redrawing repeats until one row needs `_MAX_TRIES`: then the pool is spent."""
    rows: list[Row] = []
    seen: set[str] = set()
    tries = _MAX_TRIES
    for _ in range(n):
        row = draw()
        for attempt in range(tries + 1):
            if row["question"] not in seen:
                break
            if attempt == tries:
                tries = 0  # accept repeats from now on
            else:
                row = draw()
        seen.add(row["question"])
        rows.append(row)
    return rows


# -- arithmetic -----------------------------------------------------------------------------------
# (operand range, operators) per difficulty; level 5 chains three operands with precedence.
_ARITH_LEVELS: dict[int, tuple[tuple[int, int], str]] = {
    1: ((0, 9), "+"),
    2: ((0, 9), "+-*"),
    3: ((10, 99), "+-*"),
    4: ((100, 999), "+-*"),
    5: ((2, 99), "+-*"),
}
_SHOW = {"+": "+", "-": "-", "*": "×"}


def _arithmetic(rng: random.Random, difficulty: int) -> Row:
    (lo, hi), ops = _ARITH_LEVELS[difficulty]
    count = 3 if difficulty == 5 else 2
    nums = [rng.randint(lo, hi) for _ in range(count)]
    chosen = [rng.choice(ops) for _ in range(count - 1)]
    if difficulty in (3, 4) and chosen[0] == "*":
        nums[1] = rng.randint(2, 12 if difficulty == 3 else 99)  # keep products readable
    if difficulty <= 3 and chosen[0] == "-" and nums[0] < nums[1]:
        nums.reverse()  # no negative answers on the easy levels
    expr = " ".join(_interleave([str(x) for x in nums], chosen))
    shown = " ".join(_interleave([str(x) for x in nums], [_SHOW[o] for o in chosen]))
    value = _evaluate(ast.parse(expr, mode="eval").body, [])  # ast keeps × before + in level 5
    return {"question": f"What is {shown}?", "answer": str(int(value))}


def _interleave(items: list[str], ops: list[str]) -> list[str]:
    out = [items[0]]
    for op, item in zip(ops, items[1:]):
        out += [op, item]
    return out


# -- countdown ------------------------------------------------------------------------------------
# (how many numbers, their range, allowed operators, largest target) per difficulty
_COUNTDOWN_LEVELS: dict[int, tuple[int, tuple[int, int], str, int]] = {
    1: (3, (1, 10), "+-*", 100),
    2: (3, (1, 25), "+-*/", 200),
    3: (4, (1, 50), "+-*/", 500),
}


def _countdown(rng: random.Random, difficulty: int) -> Row:
    count, (lo, hi), ops, limit = _COUNTDOWN_LEVELS[difficulty]
    while True:
        numbers = [rng.randint(lo, hi) for _ in range(count)]
        target, solution = _fold(rng, numbers, ops)
        if 1 <= target <= limit and target not in numbers:
            break
    listed = ", ".join(str(x) for x in numbers)
    question = (
        f"Using the numbers {listed}, write an expression that equals {target}. "
        f"Use each number exactly once; allowed operators: {' '.join(ops)} (parentheses are fine)."
    )
    return {"question": question, "answer": str(target), "numbers": numbers, "solution": solution}


def _fold(rng: random.Random, numbers: list[int], ops: str) -> tuple[int, str]:
    """Combine the numbers left to right with random operators: a target that is surely reachable."""
    order = numbers[:]
    rng.shuffle(order)
    value, expr = Fraction(order[0]), str(order[0])
    for n in order[1:]:
        op = rng.choice(ops)
        if op == "/" and (n == 0 or value % n):
            op = "+"  # keep every intermediate an integer
        inner = f"({expr})" if " " in expr else expr
        if op == "-" and value < n:
            value, expr = n - value, f"{n} - {inner}"
            continue
        value = {"+": value + n, "-": value - n, "*": value * n, "/": value / n}[op]
        expr = f"{inner} {op} {n}"
    return int(value), expr


_ALLOWED_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def verify_countdown(expr: str, numbers: list[int], target: int | str) -> bool:
    """True when `expr` uses each of `numbers` exactly once with + - * / and equals `target`.

    Accepts × ÷ − and a trailing `= target`; rejects anything else (names, powers, unary minus).

    >>> verify_countdown("(7 - 3) * 5", [3, 5, 7], 20)
    True
    """
    text = str(expr).strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    text = text.split("=")[0].strip()
    if not text or len(text) > 200:
        return False
    try:
        tree = ast.parse(text, mode="eval")
        used: list[int] = []
        value = _evaluate(tree.body, used)
        return sorted(used) == sorted(int(n) for n in numbers) and value == Fraction(str(target).strip())
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return False


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        return _ALLOWED_OPS[type(node.op)](left, right)
    raise ValueError(f"not allowed in a countdown expression: {ast.dump(node)[:40]}")


def _check_countdown(predicted: str, row: Mapping[str, Any]) -> bool:
    if not isinstance(row.get("numbers"), (list, tuple)):
        raise TaskError("countdown rows need a 'numbers' column listing the numbers to use, e.g. [3, 5, 7]")
    return verify_countdown(predicted, list(row["numbers"]), row["answer"])


# -- letter_count ---------------------------------------------------------------------------------
_SHORT_WORDS = (
    "apple banana cherry lemon melon grape berry paper pepper letter bottle kitten puppy "
    "mirror rabbit coffee butter cookie summer yellow hello balloon carrot tomato"
).split()
_LONG_WORDS = (
    "strawberry mississippi raspberry committee bookkeeper accessory assessment parallel "
    "successful independence programming occurrence tennessee embarrassment possession "
    "refrigerator hippopotamus bubblegum cinnamon millennium"
).split()


def _letter_count(rng: random.Random, difficulty: int) -> Row:
    if difficulty == 1:
        text = rng.choice(_SHORT_WORDS)
    elif difficulty == 2:
        text = rng.choice(_LONG_WORDS)
    else:
        text = " ".join(rng.sample(_SHORT_WORDS + _LONG_WORDS, 2))
    letters = sorted(set(text.replace(" ", "")))
    if rng.random() < 0.85:
        letter = rng.choice(letters)
    else:  # sometimes the answer is 0
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c not in letters])
    kind = "word" if " " not in text else "phrase"
    question = f"How many times does the letter '{letter}' appear in the {kind} '{text}'?"
    return {"question": question, "answer": str(text.count(letter))}


# -- sort -----------------------------------------------------------------------------------------
# (how many numbers, their range) per difficulty
_SORT_LEVELS: dict[int, tuple[int, tuple[int, int]]] = {1: (4, (0, 9)), 2: (6, (0, 99)), 3: (8, (-99, 99))}


def _sort(rng: random.Random, difficulty: int) -> Row:
    count, (lo, hi) = _SORT_LEVELS[difficulty]
    if hi - lo + 1 >= count:
        numbers = rng.sample(range(lo, hi + 1), count)
    else:
        numbers = [rng.randint(lo, hi) for _ in range(count)]
    listed = ", ".join(str(x) for x in numbers)
    question = (
        f"Sort these numbers from smallest to largest: {listed}. "
        "Give the answer as a comma-separated list."
    )
    return {"question": question, "answer": ", ".join(str(x) for x in sorted(numbers))}


def _parse_int_list(text: str) -> list[int] | None:
    parts = [p for p in re.split(r"[,\s]+", str(text).strip().strip("[]()")) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        return None


def _check_sort(predicted: str, row: Mapping[str, Any]) -> bool:
    got = _parse_int_list(predicted)
    return got is not None and got == _parse_int_list(row["answer"])


# -- registry -------------------------------------------------------------------------------------
TASKS: dict[str, Task] = {
    "arithmetic": Task(
        "arithmetic", "small +, -, × problems; difficulty 1 is single-digit addition (1–5)",
        "What is 3 + 4?", 5, _arithmetic,
    ),
    "countdown": Task(
        "countdown", "reach a target with the given numbers and + - * / (1–3); any valid expression counts",
        "Using the numbers 3, 5, 7, write an expression that equals 20. …", 3, _countdown, _check_countdown,
    ),
    "letter_count": Task(
        "letter_count", "count a letter in a word, 'strawberry' style (1–3)",
        "How many times does the letter 'r' appear in the word 'strawberry'?", 3, _letter_count,
    ),
    "sort": Task(
        "sort", "sort a short list of numbers; answer comma-separated (1–3)",
        "Sort these numbers from smallest to largest: 7, 2, 9, 4. …", 3, _sort, _check_sort,
    ),
}


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """Look up a task; an unknown name raises TaskError listing the valid ones."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]


def generate(name: str, n: int, seed: int = 0, **params: Any) -> list[Row]:
    """Rows of task `name`; `params` may hold `difficulty`. Unknown names and params raise TaskError."""
    task = get_task(name)
    unknown = sorted(set(params) - {"difficulty"})
    if unknown:
        raise TaskError(f"task {name}: unknown parameter {unknown[0]!r}; valid parameters: difficulty")
    return task.generate(n, seed, **params)


def check_answer(name: str, predicted: str, row: Mapping[str, Any]) -> bool:
    """Whether `predicted` (the text inside the answer tag) is right for a row of task `name`.

    >>> row = {"answer": "20", "numbers": [3, 5, 7]}
    >>> [check_answer("countdown", p, row) for p in ["(7 - 3) * 5", "20", "7 + 3 + 10"]]
    [True, False, False]
    >>> [check_answer("sort", p, {"answer": "2, 4, 7, 9"}) for p in ["2,4,7,9", "4, 2, 7, 9", "9"]]
    [True, False, False]
    """
    task = get_task(name)
    if task.check is not None:
        return task.check(predicted, row)
    from .rewards.answers import answers_match  # here: it loads math-verify (sympy), which listing tasks does not need

    return answers_match(predicted, row["answer"])
