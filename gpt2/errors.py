"""Errors the user can fix."""


class UserError(ValueError):
    """An error caused by bad input (a bad value, a missing file...); the CLI prints its message without a
    traceback. A ValueError, so code that validates arguments can raise it where a ValueError is expected."""
