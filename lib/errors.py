"""One error type for mistakes a user can fix: bad input, missing tools, unknown names.

Every message is one line that names the offending input and says what to do. Notebooks
show it without a stack trace (see :func:`lib.notebook.setup`); scripts print it and exit 1.
"""

from __future__ import annotations


class CompanionError(Exception):
    """A user-fixable problem, reported as a single line (no traceback needed)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
