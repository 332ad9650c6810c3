"""User-facing errors.

Every problem a user can cause (bad input, bad option, unwritable output) is raised as a
:class:`CwpError` whose message is one line naming the problem and the fix. The CLI prints it and
exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class CwpError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(CwpError):
    """The model, its files or an option cannot be used as given."""


class OutputError(CwpError):
    """The output cannot be written (permissions, full disk, ...)."""

    exit_code = 3
