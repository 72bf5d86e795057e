"""Bad input in the app gets a clear message in the page and loses nothing saved: a reward that
raises, a model that cannot be loaded offline, a start while the machine is busy."""

from __future__ import annotations

import json

import pytest
from helpers import machine_held
from ui_helpers import launch_app

RAISES = "def explodes(prompts, completions, **kwargs):\n    raise ZeroDivisionError('boom')\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from launch_app(tmp_path_factory.mktemp("ui-bad"))


def test_a_reward_that_raises_is_named_with_its_error(app):
    session = app.client()
    out = session.call("/save_reward_file", "raises.py", RAISES)
    assert "explodes" in out["rewards.check"] and "ZeroDivisionError: boom" in out["rewards.check"]
    assert "Traceback" not in out["rewards.check"]


def test_a_model_that_cannot_be_loaded_offline_is_refused_before_a_run_exists(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    session.call("/set_options", json.dumps({"model.name": "someone/not-a-model"}))
    message = session.client.predict(False, api_name="/train_start")
    assert "Not started" in message and "someone/not-a-model" in message and "HF_HUB_OFFLINE" in message
    assert not app.runs_dir.exists() or list(app.runs_dir.iterdir()) == []


def test_start_while_another_job_holds_the_machine_is_refused_with_its_name(app, tmp_path):
    with machine_held(tmp_path / "other-run"):
        session = app.client()
        session.call("/select_preset", "cpu")
        message = session.client.predict(False, api_name="/train_start")
        assert "Not started" in message and "other-run" in message
