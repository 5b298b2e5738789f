"""Errors that reach the user as one sentence and an exit code, never a traceback."""


class UserError(Exception):
    """Bad input or environment: the CLI prints the message and exits non-zero."""

    exit_code = 1


class ConfigError(UserError):
    """A config key is unknown, mistyped or missing (exit code 2, like argparse)."""

    exit_code = 2


class DataError(UserError):
    """Shards are missing, unreadable, or too much of the data is bad."""
