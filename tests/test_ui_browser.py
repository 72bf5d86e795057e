"""The app in a real headless Chromium (Debian's package, driven by Playwright): a new user clicks
Setup → Data → Rewards → Train, loads a small config, tries the rubric, starts a short run, sees
the reward plot draw its lines, stops it, resumes it, reloads the page mid-run (it finds the job
again) and watches it to the end. Page errors fail the test; the
screenshots of Setup and of the Train tab mid-run go to docs/ for the README."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_helpers import PageErrors, browser_session
from helpers import ROOT
from ui_helpers import launch_app

DOCS = ROOT / "docs"
SMALL = """\
preset: cpu
grpo:
  num_generations: 4
  per_device_train_batch_size: 4
  max_completion_length: 16
  max_steps: 5
lora: {r: 4, alpha: 8}
data: {size: 40, eval_size: 4}
output: {save_steps: 1, sample_every: 1}
"""
LINES = "#train-plot-reward .vega-embed g.mark-line path"


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from launch_app(tmp_path_factory.mktemp("ui-browser"))


def _state(page) -> str:
    return page.locator("#train-state").inner_text(timeout=5000)


@pytest.mark.slow
def test_a_new_user_trains_from_the_browser(browser, app, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = PageErrors(page)
    page.goto(app.url)

    # Setup: hardware, preset, the memory verdict; load a small config from a file
    page.wait_for_selector("#setup-hardware")
    assert "CPU only" in page.locator("#setup-hardware").inner_text()
    command = "() => [...document.querySelectorAll('#setup-command textarea')].map(t => t.value).join('')"
    error = "() => document.querySelector('#setup-error')?.innerText || ''"
    for typed, said in [("4", ""), ("5", "grpo.learning_rate=5"), ("0.00005", "")]:  # an edit, a wrong value, a fix
        box = "#setup-grpo-max_steps" if typed == "4" else "#setup-grpo-learning_rate"
        page.locator(f"{box} input[type=number]").fill(typed)
        page.locator(f"{box} input[type=number]").press("Tab")
        page.wait_for_function(f"() => ({error})().includes({said!r}) && ({said!r} !== '' || ({error})() === '')",
                               timeout=30000)
    page.click("#setup-show-command")
    page.wait_for_function(f"() => ({command})().includes('max_steps=4')", timeout=30000)
    assert "epsilon_high" not in page.evaluate(command)  # the optional field nobody touched stays unset
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    with page.expect_file_chooser() as chooser:
        page.click("#setup-load")
    chooser.value.set_files(str(config))
    page.wait_for_function("() => document.querySelector('#setup-command')?.innerText.includes('max_steps=5')"
                           " || [...document.querySelectorAll('#setup-command textarea')].some(t => t.value.includes('max_steps=5'))",
                           timeout=30000)
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "setup.png"), full_page=True)

    # Data: the built-in task, its preview
    page.click("#tab-data-button")
    page.wait_for_selector("#data-task", state="visible")
    page.click("#data-preview-button")
    page.wait_for_function("() => (document.querySelector('#data-preview')?.innerText || '').includes('tokens')",
                           timeout=120000)

    # Rewards: the rubric, and a dry run on the base model
    page.click("#tab-rewards-button")
    page.wait_for_selector("#rewards-table", state="visible")
    page.click("#rewards-try")
    # done when its groups are listed (the empty table is there from the start); Start would be refused
    # while the dry run's child still holds the model
    page.wait_for_function("() => (document.querySelector('#rewards-try-summary')?.innerText || '').includes('group 1')",
                           timeout=300000)
    page.wait_for_selector("#rewards-try-table table", timeout=30000)

    # Train: start, watch the reward plot draw, stop, resume to the end
    page.click("#tab-train-button")
    page.click("#train-start")
    page.wait_for_function(f"() => document.querySelectorAll('{LINES}').length > 0", timeout=600000)
    assert "train-sample-table" in page.locator("#train-sample-view").inner_html()
    page.wait_for_function("() => Number(document.querySelector('#train-step')?.innerText) >= 2", timeout=300000)
    page.wait_for_timeout(4500)  # the next tick (every 4 s) draws step 2: the curves are lines now, not points
    page.screenshot(path=str(DOCS / "train.png"), full_page=True)
    ticks = page.evaluate("() => [...document.querySelectorAll('#train-plot-reward g.role-axis-label text')]"
                          ".map(t => t.textContent)")
    assert "5" in ticks and not [t for t in ticks if "e" in t], ticks  # the whole run's axis, plain numbers
    # while the worker lives only Stop is offered
    assert page.locator("#train-start").is_disabled() and page.locator("#train-resume").is_disabled()
    page.click("#train-stop")
    page.wait_for_function("() => document.querySelector('#train-state')?.innerText === 'stopped'", timeout=300000)
    stopped_at = int(page.locator("#train-step").inner_text())
    assert 2 <= stopped_at < 5
    page.click("#train-resume")
    page.wait_for_function("() => document.querySelector('#train-state')?.innerText !== 'stopped'", timeout=120000)
    errors.collect()
    page.reload()  # a reload mid-run: the new page finds the running job and draws its curves again
    page.click("#tab-train-button")
    page.wait_for_function(f"() => document.querySelectorAll('{LINES}').length > 0", timeout=120000)
    assert page.locator("#train-state").inner_text() in ("loading the model", "running", "finished")
    page.wait_for_function("() => document.querySelector('#train-state')?.innerText === 'finished'", timeout=600000)
    assert page.locator("#train-step").inner_text() == "5"
    page.wait_for_function(f"() => document.querySelectorAll('{LINES}').length > 0", timeout=60000)

    # Runs: the finished run is listed as finished by opening the tab (the page was loaded mid-run)
    page.click("#tab-runs-button")
    page.wait_for_function("() => (document.querySelector('#runs-table')?.innerText || '').includes('finished')",
                           timeout=30000)
    errors.assert_none()
