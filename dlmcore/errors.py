"""The one base class of user mistakes.

Any exception that derives from :class:`UserError` is a mistake of the user's (a bad config,
a missing or corrupt file, a wrong argument), not a bug: the CLI prints its message — what was
received, what is allowed, what to do next — without a traceback and exits with code 2. Errors
that do not derive from it are bugs and keep their traceback.
"""

from __future__ import annotations

MAX_VALUE_CHARS = 80
"""The longest rendering of a user's raw value that an error message quotes."""


class UserError(Exception):
    """A user mistake; ``str()`` is the whole message the CLI prints."""


def short_repr(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (``…`` and the full length appended).

    Error messages quote raw values through this, so a hostile value (a megabyte string, an
    alias-expanded list) never makes a message huge. Containers are not rendered past what is
    shown: a list of 10^7 items costs no more than a short one.
    """
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        kind = type(value).__name__
        return f"<{kind} of {len(value)} items>"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} chars)"


class ConfigError(UserError, ValueError):
    """One or more configuration problems; ``problems`` holds each as a sentence."""

    def __init__(self, problems: list[str], header: str = "Invalid configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem(s)):\n{lines}")
