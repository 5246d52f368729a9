"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a missing file, an impossible config). The entry
point prints its message as a single line and exits with status 2, without a Python traceback.
"""


class UserError(Exception):
    """A problem with the user's input or configuration; the message says what and how to fix it."""
