"""Launch the GRPO Box app: `python app.py` serves it on http://127.0.0.1:7860.

Flags: --host/--port, --share (a public Gradio link; off by default), --auth USER:PASS,
--runs-dir (where runs go; default <data home>/runs), --no-browser (by default a browser tab
opens when there is a display). Serving on a non-loopback address without --auth is warned
about. Gradio's analytics are switched off before gradio is imported, and its browser-side run
history is off.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (needs network)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--runs-dir", help="folder of the runs (default: <data home>/runs)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    return p.parse_args(argv)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth expects USER:PASS, e.g. --auth alice:s3cret")
    return user, password


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = parse_auth(args.auth)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    from grpo_box.ui import launch

    launch(args.host, args.port, share=args.share, auth=auth, runs_dir=args.runs_dir,
           open_browser=False if args.no_browser else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
