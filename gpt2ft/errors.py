"""Errors that end a command with one sentence, not a traceback: a user's (exit code 2), and a
study's trials failing again and again (exit code 3)."""


class UserError(Exception):
    """A problem with the user's input (config, corpus, model, paths); the message says what to change."""


class ConfigError(UserError):
    """A config file or override that cannot be used as given."""


class TrialsFailing(Exception):
    """A study stopped after ``study.max_failures`` trials failed in a row; what completed is
    logged and picked. The message names the last failure."""

    exit_code = 3
