"""The one exception type for a user's mistake (a bad file, column, option or number).

The CLI prints its message as one line on stderr and exits with status 2; nothing else
about it is special. Raise it where the mistake is found, with what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for; the message says what and how to fix it."""
