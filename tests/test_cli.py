"""The command line answers the quick commands without loading a model."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest
from helpers import run_cli

_cli = partial(run_cli, timeout=300)


def test_presets_lists_all_and_proposes_one():
    out = _cli("presets")
    assert out.returncode == 0, out.stderr
    for name in ("cpu", "8gb", "12gb", "16gb", "24gb"):
        assert f"\n{name} " in out.stdout
    assert "proposed preset: cpu" in out.stdout  # no NVIDIA GPU on the test machine


def test_estimate_json_has_verdict_and_breakdown():
    out = _cli("estimate", "--preset", "8gb", "--json")
    report = json.loads(out.stdout)
    assert report["verdict"] == "fits" and report["total"] < 8 * 0.9 and report["breakdown"]
    too_big = json.loads(_cli("estimate", "--preset", "8gb", "--vram", "3", "--json").stdout)
    assert too_big["verdict"] == "will not fit" and "lower" in too_big["suggestion"]


def test_bad_override_is_a_clear_error_not_a_traceback():
    out = _cli("estimate", "--preset", "cpu", "--set", "grpo.num_generations=3")
    assert out.returncode == 2
    assert "not divisible by grpo.num_generations=3" in out.stderr and "Traceback" not in out.stderr


def test_rewards_list_and_score(tmp_path):
    listed = json.loads(_cli("rewards", "list", "--json").stdout)
    assert {"correctness", "xml_count", "think_format"} <= {r["name"] for r in listed}
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("- {name: correctness, weight: 1.0}\n")
    data = tmp_path / "samples.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2+2?", "completions": ["<answer>4</answer>", "<answer>5</answer>"],
                                "answer": "4"}) + "\n")
    report = json.loads(_cli("rewards", "score", "--rubric", str(rubric), "--data", str(data), "--json").stdout)
    scored = report["groups"][0]["completions"]
    assert [c["scores"]["correctness"] for c in scored] == [1.0, 0.0]
    assert [round(c["advantage"], 3) for c in scored] == [0.707, -0.707]  # (r - mean) / (sample std + 1e-4)


def test_rewards_score_needs_data_or_sample():
    for extra in ([], ["--data", "x.jsonl", "--sample", "2"]):
        out = _cli("rewards", "score", *extra)
        assert out.returncode == 2 and "either --data FILE.jsonl" in out.stderr and "--sample N" in out.stderr


def test_user_errors_are_one_line_not_a_traceback(tmp_path):
    from grpo_box.config import RunConfig
    from grpo_box.runs import create_run

    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path), "untrained"
    run = create_run(config)
    for args, says in [(("export", str(run.path)), "train"), (("merge", str(run.path)), "train"),
                       (("serve", str(tmp_path / "missing.gguf")), "export a GGUF first"),
                       (("chat", str(tmp_path / "m.gguf"), "--base"), "--base needs a run directory"),
                       (("chat", str(tmp_path / "m.gguf"), "--compare"), "--compare needs a run directory")]:
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(tmp_path, monkeypatch, capsys):
    """Only UserError is reduced to `error: …`: a plain ValueError or FileNotFoundError from inside
    the engine is a bug, and leaves main() with its traceback."""
    from grpo_box import runs
    from grpo_box.__main__ import main
    from grpo_box.errors import ConfigError

    for bug in (ValueError("an internal bug"), FileNotFoundError("an internal bug")):
        def broken(root=None, bug=bug):
            raise bug

        monkeypatch.setattr(runs, "list_runs", broken)
        with pytest.raises(type(bug), match="an internal bug"):
            main(["runs", "--root", str(tmp_path)])

    def fixable(root=None):
        raise ConfigError("grpo.max_steps=0: set it to 1 or more")

    monkeypatch.setattr(runs, "list_runs", fixable)
    assert main(["runs", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "error: grpo.max_steps=0: set it to 1 or more\n"


def test_user_fixable_engine_problems_are_user_errors(tmp_path):
    """The engine's own bad-input errors derive from UserError, so the CLI prints them as one line."""
    from grpo_box.errors import UserError
    from grpo_box.inference import load_for_generation
    from grpo_box.tasks import generate

    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        load_for_generation("someone/some-model", tmp_path)
    with pytest.raises(UserError, match="cannot take a LoRA adapter"):
        load_for_generation(tmp_path / "model.gguf", tmp_path)
    with pytest.raises(UserError, match="GGUF file not found"):
        load_for_generation(tmp_path / "model.gguf")
    for name, params in (("nope", {}), ("countdown", {"difficulty": 99}), ("sort", {"level": 2})):
        with pytest.raises(UserError):
            generate(name, 2, **params)


def test_push_uploads_the_chosen_file_with_the_token_from_the_environment(tmp_path, monkeypatch, capsys):
    """The Hub itself cannot be reached here: HfApi is replaced at that boundary only."""
    import huggingface_hub

    from grpo_box.__main__ import main
    from grpo_box.config import RunConfig
    from grpo_box.runs import create_run

    token = "hf_TESTtokenTEST"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["private"]))

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id):
            calls.append(("file", Path(path_or_fileobj).name, repo_id))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("folder", Path(folder_path).name, repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path), "demo"
    run = create_run(config)
    (run.path / "export").mkdir()
    for quant in ("f16", "q4_k_m"):
        (run.path / "export" / f"demo-{quant}.gguf").write_bytes(b"GGUF")

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    assert main(["push", str(run.path), "--repo", "me/demo"]) == 2
    assert "set HF_TOKEN" in capsys.readouterr().err and calls == []

    monkeypatch.setenv("HF_TOKEN", token)
    assert main(["push", str(run.path), "--repo", "me/demo"]) == 0
    assert calls == [("token", token), ("create", "me/demo", True), ("file", "demo-q4_k_m.gguf", "me/demo")]
    assert main(["push", str(run.path), "--repo", "me/demo", "--what", "adapter"]) == 2  # not trained yet
    out = capsys.readouterr()
    assert "has no trained adapter yet" in out.err
    assert token not in out.out + out.err


def test_runs_on_an_empty_root(tmp_path):
    out = _cli("runs", "--root", str(tmp_path), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
