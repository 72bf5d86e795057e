"""The engine's two shapes of progress callback, one name each.

`Progress(message, fraction)` reports a long step (merge, export, a conversion, an upload, a server
start) with the share done so far, 0.0 to 1.0. `RowsProgress(done, total, what)` reports rows
generated so far, for evaluation and the sampled dry run, where a count means more than a share.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, float], None]
RowsProgress = Callable[[int, int, str], None]
