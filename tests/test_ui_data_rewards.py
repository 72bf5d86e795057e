"""The Data and Rewards tabs through their API (gradio_client against the app on a free port):
an offline task previewed by the engine in a child process, bad data files, reward files with
errors, the rubric editor and one dry run on the bundled model."""

from __future__ import annotations

import json

import pytest
from ui_helpers import launch_app, value


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from launch_app(tmp_path_factory.mktemp("ui-data"))


def test_offline_task_preview_runs_the_engine_in_a_child_process(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    chosen = session.call("/set_options", json.dumps({"data.source": "task:sort?difficulty=2", "data.size": 64}))
    assert value(chosen["data.kind"]) == "task" and value(chosen["data.task"]) == "sort"
    assert value(chosen["data.difficulty"]) == 2
    shown = session.call("/preview_data", "task", "", "")  # the form's source choice: kind, path, Hub id
    assert shown["data.error"] == ""
    html = shown["data.preview"]
    assert html.count('class="data-preview-row"') == 3
    assert "Sort these numbers" in html and "prompt tokens" in html
    assert "&lt;|im_start|&gt;system" in html  # the chat template applied, as the model sees it
    assert "task:sort?difficulty=2, row " in html  # where each row came from
    # the cpu preset's one-shot turn and <think> prefill are in every prompt, once; the checkboxes follow
    assert value(chosen["data.data.one_shot"]) is True and value(chosen["data.data.prefill"]) is True
    assert html.count("What is 3 + 5?") == 3 and html.count("assistant\n&lt;think&gt;\n</pre>") == 3
    session.call("/set_options", json.dumps({"data.one_shot": False, "data.prefill": False}))
    plain = session.call("/preview_data", "task", "", "")["data.preview"]
    assert "What is 3 + 5?" not in plain and "&lt;think&gt;\n</pre>" not in plain
    to_file = session.form("/apply_data", {"data.kind": "file", "data.path": ""})  # the source changes: the
    assert to_file["data.preview"] == "" and "Upload a file" in to_file["data.error"]  # task's rows go
    same = session.form("/apply_data", {"data.kind": "task", "data.task": "sort", "data.difficulty": 2})
    assert same["data.preview"] != ""  # unchanged source: skipped, not cleared (a preview on screen stays)


def test_uploaded_file_columns_and_bad_files_get_the_engines_message(app, tmp_path):
    from gradio_client import handle_file

    session = app.client()
    session.call("/select_preset", "cpu")
    good = tmp_path / "qa.csv"
    good.write_text("problem,solution,level\nWhat is 2+2?,4,1\nWhat is 3+3?,6,1\nWhat is 1+5?,6,2\n")
    up = session.call("/upload_data", handle_file(str(good)))
    assert up["data.error"] == "" and value(up["data.kind"]) == "file"
    assert value(up["data.prompt_column"]) == "problem" and value(up["data.answer_column"]) == "solution"
    assert up["data.prompt_column"]["choices"][:3] == [["problem", "problem"], ["solution", "solution"],
                                                       ["level", "level"]]
    assert str(app.files_dir / "uploads") in value(up["data.path"])  # a copy that outlives Gradio's temp file

    one = tmp_path / "onecol.csv"
    one.write_text("question\nWhat is 2+2?\nWhat is 3+3?\n")
    single = session.call("/upload_data", handle_file(str(one)))["data.error"]
    assert "onecol.csv: data.prompt_column and data.answer_column are both 'question'" in single  # the engine's words
    assert "this file has no other column, so add one with each question's answer" in single
    paired = session.call("/upload_data", handle_file(str(tmp_path / "qa.csv")))  # the good file again: no error
    assert paired["data.error"] == "" and value(paired["data.answer_column"]) == "solution"

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "What is 2+2?", "answer": "4"}\n{"question": "What is 3+3?", "answer": \n')
    bad = session.call("/upload_data", handle_file(str(broken)))
    assert "line 2: not valid JSON" in bad["data.error"] and "Traceback" not in bad["data.error"]
    assert "broken.jsonl, line 2" in bad["data.error"] and "uploads" not in bad["data.error"]  # the user's file name
    kept = session.call("/preview_data", "file", value(bad["data.path"]), "")  # never the previous file's rows
    assert "line 2: not valid JSON" in kept["data.error"] and "the settings still use" in kept["data.error"]
    assert kept["data.preview"] == "" and value(up["data.path"]) in kept["data.error"]

    empty = tmp_path / "empty_answer.jsonl"
    empty.write_text("\n".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1) if i != 2 else ""})
                               for i in range(4)) + "\n")
    chosen = value(session.call("/upload_data", handle_file(str(empty)))["data.path"])
    failed = session.call("/preview_data", "file", chosen, "")  # the head reads fine; the engine's reader in the child finds row 3
    assert "line 3: empty 'answer'" in failed["data.error"] and "Traceback" not in failed["data.error"]
    assert "empty_answer.jsonl, line 3" in failed["data.error"] and "uploads" not in failed["data.error"]


def test_hub_dataset_form_and_an_unknown_id_offline(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    hub = session.form("/apply_data", {"data.kind": "hub", "data.hub_id": "nobody/no-such-dataset",
                                       "data.data.subset": "main", "data.data.split": "test"})
    assert hub["data.error"] == ""
    line = session.call("/show_command")["setup.command"]
    assert "--set data.source=nobody/no-such-dataset --set data.subset=main --set data.split=test" in line
    failed = session.call("/preview_data", "hub", "", "nobody/no-such-dataset")  # HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set for the tests
    assert "could not load Hub dataset 'nobody/no-such-dataset'" in failed["data.error"]
    assert "Traceback" not in failed["data.error"]


BROKEN_SYNTAX = "def score(prompts, completions, **kwargs)\n    return [1.0 for _ in completions]\n"
WRONG_LENGTH = "def one_score(prompts, completions, **kwargs):\n    return [1.0]\n"


def test_reward_file_errors_are_shown_and_nothing_saved_is_lost(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    saved = session.call("/save_reward_file", "mine.py", BROKEN_SYNTAX)
    assert "Not saved" in saved["rewards.check"] and "line 1: syntax error" in saved["rewards.check"]
    assert "Traceback" not in saved["rewards.check"] and ".check" not in saved["rewards.check"]
    assert "mine.py, line 1" in saved["rewards.check"] and str(app.files_dir) not in saved["rewards.check"]
    assert not (app.files_dir / "rewards" / "mine.py").exists()

    good = (app.reg["rewards.code"].value)  # the example the editor starts from
    ok = session.call("/save_reward_file", "mine.py", good)
    assert "File checked" in ok["rewards.check"] and "user:close_enough" in ok["rewards.check"]
    assert "user:close_enough" in [c[1] for c in ok["rewards.name"]["choices"]]
    assert (app.files_dir / "rewards" / "mine.py").read_text() == good

    refused = session.call("/save_reward_file", "mine.py", BROKEN_SYNTAX)
    assert "Not saved" in refused["rewards.check"]
    assert (app.files_dir / "rewards" / "mine.py").read_text() == good  # the last good file stays

    wrong = session.call("/save_reward_file", "wrong.py", WRONG_LENGTH)
    assert "returned 1 scores for 3 completions" in wrong["rewards.check"]
    assert "Traceback" not in wrong["rewards.check"]


def test_rubric_editor_and_one_dry_run_on_the_bundled_model(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    session.call("/set_options", json.dumps({"grpo.num_generations": 2, "grpo.per_device_train_batch_size": 2,
                                             "grpo.max_completion_length": 12, "data.source": "task:arithmetic"}))
    added = session.call("/rubric_add", None, "target_length", 0.25, '{"target": 40}', "")
    rows = added["rewards.table"]["data"]
    assert [r[1] for r in rows] == ["xml_count", "think_format", "correctness", "target_length"]
    assert json.loads(rows[3][3]) == {"target": 40} and value(added["rewards.row"]) == 4
    moved = session.call("/rubric_up", 4, "target_length", 0.25, '{"target": 40}', "")
    assert [r[1] for r in moved["rewards.table"]["data"]][2:] == ["target_length", "correctness"]
    unknown = session.call("/rubric_update", 1, "xml_cnt", 1.0, "{}", "")
    assert "unknown reward 'xml_cnt'" in unknown["rewards.error"] and "did you mean 'xml_count'" in unknown["rewards.error"]
    for params, said in (('{"nope": 1}', "reward 'target_length' has no param 'nope'; its params (with defaults): "
                                         "target=200, unit='tokens'"),
                         ('{"target": "long"}', "param target='long' should be a int")):
        refused = session.call("/rubric_add", None, "target_length", 1.0, params, "")  # said at once, not by a dry run
        assert said in refused["rewards.error"], refused["rewards.error"]  # and no row added (see the removal below)
    removed = session.call("/rubric_remove", 1, "", 1.0, "", "")
    assert [r[1] for r in removed["rewards.table"]["data"]] == ["think_format", "target_length", "correctness"]
    assert value(removed["rewards.row"]) is None  # a double click removes one row, then asks which
    twice = session.call("/rubric_remove", None, "", 1.0, "", "")
    assert "choose a row first" in twice["rewards.error"]

    result = session.call("/try_rubric", 1)
    table = result["rewards.try_table"]
    assert table["headers"] == ["group", "completion", "think_format", "target_length", "correctness", "total",
                                "advantage"]
    assert len(table["data"]) == 2  # one prompt, two completions
    assert "group 1" in result["rewards.try_summary"]
    totals = [row[5] for row in table["data"]]
    box = result["rewards.try_warnings"]
    assert "Traceback" not in box
    if len(set(totals)) == 1:  # both completions scored alike: the engine's warning must stand out
        assert "grpo-box-warning" in box and "no learning signal" in box
    else:
        assert sorted(row[6] for row in table["data"])[0] < 0 < sorted(row[6] for row in table["data"])[-1]

    # the dry run on screen scored the old rubric: an edit clears it and says why
    empty = session.call("/rubric_update", 2, "target_length", None, '{"target": 40}', box)
    assert "the weight of target_length is empty: type a number" in empty["rewards.error"]
    assert "rubric changed" not in str(empty["rewards.try_warnings"])  # refused: the rubric and the dry run stand
    edited = session.call("/rubric_update", 2, "target_length", 0.5, '{"target": 40}', box)
    assert "The rubric changed since this dry run" in edited["rewards.try_warnings"]
    assert edited["rewards.try_summary"] == "" and not (value(edited["rewards.try_table"]) or {}).get("data")
