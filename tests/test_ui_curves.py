"""The Train/Runs tabs' plot frames, progress, hints and sample view, from metric records."""

from __future__ import annotations

from grpo_box.ui.curves import hints, overlay_frame, plot_frame, progress, step_axis, thin
from grpo_box.ui.train_view import sample_choices, sample_html, status_html


def _metrics(n: int, **extra):
    return [{"step": i, "reward": i / n, "reward_std": 0.5, "rewards/correctness/mean": i / (2 * n),
             "rewards/xml_count/mean": 0.0, "frac_reward_zero_std": 0.25, "completions/mean_length": 30.0,
             "completions/clipped_ratio": 0.1, "loss": 0.0, "wall_time": 20.0 * i, "step_seconds": 20.0, **extra}
            for i in range(1, n + 1)]


def test_reward_frame_is_long_format_with_a_series_per_function_and_numeric_dtypes():
    frame = plot_frame("reward", _metrics(3))
    assert list(frame.columns) == ["step", "value", "series"]
    assert set(frame["series"]) == {"total", "correctness", "xml_count"}
    assert str(frame["step"].dtype) == "int64" and str(frame["value"].dtype) == "float64"
    assert plot_frame("reward", []) is None  # None, never an empty frame (LinePlot would stay blank)
    assert plot_frame("kl", _metrics(3)) is None  # no kl logged (beta = 0): nothing to draw


def test_the_step_axis_spans_the_whole_run_and_widens_when_a_resume_goes_further():
    assert step_axis(60, _metrics(2)) == [1.0, 60.0]  # the curves fill the plot as the run goes
    assert step_axis(60, []) == [1.0, 60.0]
    assert step_axis(5, _metrics(8)) == [1.0, 8.0]  # a resume past the old max_steps
    assert step_axis(1, _metrics(1)) is None  # one step: fit to the data


def test_long_runs_are_thinned_but_keep_the_last_step():
    kept = thin(_metrics(5000))
    assert len(kept) <= 601 and kept[-1]["step"] == 5000 and kept[0]["step"] == 1


def test_overlay_has_one_series_per_run():
    frame = overlay_frame({"a": _metrics(2), "b": _metrics(3), "empty": []})
    assert sorted(set(frame["series"])) == ["a", "b"] and len(frame) == 5


def test_progress_gives_step_elapsed_and_eta():
    p = progress({"step": 3, "max_steps": 10}, _metrics(3))
    assert (p["step"], p["max_steps"], p["elapsed"], p["per_step"], p["eta"]) == (3, 10, 60.0, 20.0, 140.0)
    html = status_html("run-1", {"state": "running", "step": 3, "max_steps": 10}, _metrics(3), alive=True)
    assert 'id="train-step">3<' in html and "ETA 2m 20s" in html
    for loading in ({"phase": "loading"}, {}):  # a resume loading the model: the ETA would stand still
        again = status_html("run-1", {"state": "running", "step": 3, "max_steps": 10, **loading}, _metrics(3),
                            alive=True, starting=not loading)
        assert "elapsed 1m 00s" in again and "ETA" not in again, again


def test_hints_flag_no_signal_and_a_reward_that_never_pays():
    quiet = _metrics(6, frac_reward_zero_std=1.0)
    texts = [text for kind, text in hints(quiet) if kind == "warning"]
    assert any("No learning signal in the last 5 steps" in t for t in texts)
    assert any("'xml_count' has paid nothing in 6 steps" in t for t in texts)
    assert hints(_metrics(2))[0][0] == "info" and "Watch the reward curves" in hints(_metrics(2))[0][1]


def test_a_finished_run_whose_evaluation_failed_says_so_beside_its_status():
    status = {"state": "finished", "step": 2, "max_steps": 2, "evaluation_error": "the trained model's evaluation "
              "failed (OutOfMemoryError: …); training is saved: run `python -m grpo_box eval runs/r`"}
    html = status_html("r", status, _metrics(2), alive=False)
    assert "Evaluation not done" in html and "training is saved" in html and "What happened" not in html


def test_hints_repeat_the_workers_warning_for_an_all_masked_step():
    from grpo_box.callbacks import ALL_MASKED

    metrics = _metrics(5)
    for m in metrics[2:4]:
        m["warning"] = ALL_MASKED  # as RunFilesCallback writes it beside the step's metrics
    texts = [text for kind, text in hints(metrics) if kind == "warning"]
    assert f"Step 3, 4: {ALL_MASKED}" in texts
    assert not any("updated nothing" in t for _, t in hints(_metrics(5)))


def test_a_sampled_group_shows_reasoning_answer_scores_total_and_advantage():
    sample = {"step": 4, "prompt": "What is 2 + 3?", "completions": ["<think>2 plus 3</think><answer>5</answer>", "6"],
              "rewards": {"correctness": [1.0, 0.0], "xml_count": [0.5, None]}, "advantages": [0.7, -0.7]}
    html = sample_html(sample, "think", {"correctness": 2.0, "xml_count": 0.5})
    assert "2 plus 3" in html and "<em>answer:</em> 5" in html
    assert "<strong>2.25</strong>" in html  # 2 × 1.0 + 0.5 × 0.5, weighted as the trainer weights it
    assert "0.7" in html and "-0.7" in html
    assert sample_choices([sample, {**sample, "step": 5}]) == [("step 5 · group 1", 1), ("step 4 · group 1", 0)]
    # the cpu preset's prompt: the one-shot example comes first; the question still shows at the top
    one_shot = {**sample, "prompt": "system: Think first.\nuser: What is 1 + 1?\nassistant: <think>1 plus 1</think>"
                                    "<answer>2</answer>\nuser: What is 7 + 3?"}
    shown = sample_html(one_shot, "think", {})
    assert "question (step 4):</strong> What is 7 + 3?<details>" in shown and "system: Think first." in shown


def test_weights_follow_the_names_the_trainer_logs_a_repeated_reward_under():
    from grpo_box.presets import resolve_config
    from grpo_box.ui.train_view import rubric_weights

    config = resolve_config("cpu", overrides=["rewards=[{name: correctness, weight: 2.0}, {name: xml_count, weight: 0.5},"
                                              " {name: correctness, weight: 0.25, params: {tag: answer}}]"])
    assert rubric_weights(config) == {"correctness": 2.0, "xml_count": 0.5, "correctness_2": 0.25}


def test_a_just_started_worker_shows_starting_not_the_old_state():
    """The first seconds of a resume: status.json still says stopped (and why) until the worker writes."""
    old = {"state": "stopped", "step": 2, "max_steps": 5, "error": "stopped at your request"}
    html = status_html("run-1", old, _metrics(2), alive=True, starting=True)
    assert 'id="train-state" style="color:' in html and ">starting<" in html and "stopped at your request" not in html
    settled = status_html("run-1", old, _metrics(2), alive=False)
    assert ">stopped<" in settled and "stopped at your request" in settled
