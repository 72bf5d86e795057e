"""A real headless Chromium for the browser tests: Debian's `chromium` package driven by Playwright
from PyPI (no browser download, see ../shared/UI-TESTING.md).

The README's test command installs the browser: when it is missing and this runs as root with
apt-get, `ensure_chromium` installs Debian's package (about 25 s). The app's own install never
needs it. Where no browser can be had, the browser tests skip saying why; under CI=true they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the real binary; /usr/bin/chromium is a wrapper script
FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def ensure_chromium() -> str | None:
    """None when Chromium is there (installing it if we can), else the reason it is not."""
    if CHROMIUM.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Debian's chromium is not installed and this user cannot install it (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"])
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode:
            return f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout)[-500:]}"
    return None if CHROMIUM.exists() else "apt-get installed chromium but not at /usr/lib/chromium/chromium"


def require_browser() -> None:
    """Skip (fail under CI) saying why when Chromium or Playwright is missing."""
    reason = ensure_chromium()
    try:
        import playwright  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e .[test])"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    pytest.skip(reason)


def browser_session() -> Iterator[Any]:
    """A launched Chromium (playwright Browser), closed afterwards."""
    require_browser()
    from playwright.sync_api import sync_playwright

    home = tempfile.mkdtemp(prefix="grpo-box-chromium-")
    env = {**os.environ, "XDG_CONFIG_HOME": f"{home}/config", "XDG_CACHE_HOME": f"{home}/cache"}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS, env=env)
        try:
            yield browser
        finally:
            browser.close()
            shutil.rmtree(home, ignore_errors=True)


class PageErrors:
    """Collects uncaught page errors and Gradio error toasts (a handler that raised instead of
    answering with a message); a test asserts there were none."""

    # Toasts vanish after a few seconds, so every error toast that ever appears is recorded.
    WATCH_TOASTS = """
        window.__errorToasts = [];
        new MutationObserver(() => {
            for (const el of document.querySelectorAll('.toast-body.error:not([data-seen])')) {
                el.setAttribute('data-seen', '1');
                window.__errorToasts.push(el.innerText);
            }
        }).observe(document, {childList: true, subtree: true});
    """

    def __init__(self, page: Any):
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.toasts: list[str] = []
        page.add_init_script(self.WATCH_TOASTS)  # before the next navigation

    def collect(self) -> None:
        """Keep the error toasts seen so far (call before a reload, which starts a fresh list)."""
        self.toasts += self.page.evaluate("window.__errorToasts || []")
        self.page.evaluate("window.__errorToasts = []")

    def assert_none(self) -> None:
        self.collect()
        assert self.errors == [] and self.toasts == [], (self.errors, self.toasts)
