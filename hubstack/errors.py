"""Errors shown to the user as one clear line, without a traceback."""


class CommandError(Exception):
    """A failure the user can act on; the message says what failed and what to do."""
