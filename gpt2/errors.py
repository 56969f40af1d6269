"""Errors the user can fix."""


class UserError(Exception):
    """An error caused by bad input; the CLI prints its message without a traceback."""
