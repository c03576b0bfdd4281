"""The one exception type users see.

Every problem a person can cause (a wrong path, an unknown name, a value out of
range) is raised as :class:`VispromptError` with a one-line message that names
the problem and the fix. The CLI prints it as ``error: <message>`` and exits
with status 2; library users catch it like any exception.
"""

from __future__ import annotations


class VispromptError(Exception):
    """A user-facing error: the message is one line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
