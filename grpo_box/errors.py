"""The exception family whose messages are written for the user.

Every engine error that a user can fix (a config field, a data file, a reward function, a run
without an adapter, a converter that is not installed, a port in use) derives from `UserError`
and says in its message what to change. The CLI prints such errors as one line without a
traceback, and the app will show them as a message; anything else is a bug and keeps its
traceback. Each concrete error also derives from the built-in type callers already expect
(`ValueError` for bad input, `RuntimeError` for a failed operation).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the field and what to change."""
