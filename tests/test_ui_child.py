"""The app's child-process runner: the CLI's JSON result, its one-line errors, streaming and timeouts."""

from __future__ import annotations

import pytest

from grpo_box.errors import UserError
from grpo_box.ui import child


def test_run_json_returns_the_cli_result():
    rewards = child.run_json(["rewards", "list", "--json"], timeout=120)
    assert {"correctness", "xml_count"} <= {r["name"] for r in rewards}


def test_a_failing_command_raises_the_engines_message_and_streams_stderr():
    lines: list[str] = []
    with pytest.raises(child.ChildError) as caught:
        child.run_cli(["estimate", "--preset", "cpu", "--set", "grpo.num_generations=3"], timeout=120,
                      on_line=lines.append)
    err = caught.value
    assert isinstance(err, UserError) and err.returncode == 2
    assert str(err).startswith("invalid config:") and "not divisible by grpo.num_generations=3" in str(err)
    assert "error: " not in str(err) and any(line.startswith("error: ") for line in lines)


def test_a_command_past_its_timeout_is_killed():
    with pytest.raises(child.ChildError, match="took longer than 0.05 s and was stopped"):
        child.run_cli(["rewards", "list"], timeout=0.05)


def test_error_message_prefers_the_engines_line_and_hides_tracebacks():
    assert child.error_message("loading\nerror: data.csv, line 3: empty 'answer'\n  fix it\n") == \
        "data.csv, line 3: empty 'answer'\n  fix it"
    crash = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'prompt'\n"
    assert child.error_message(crash, 1) == "the command failed (exit code 1): KeyError: 'prompt'"
    assert child.parse_progress("  8 samples per prompt: 3/4 prompts") == (3, 4)
    assert child.parse_progress("loading the model") is None
