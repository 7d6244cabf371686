"""Errors that end a command with one sentence, not a traceback: a user's (exit code 2), a
study's trials failing again and again (exit code 3), and a worker of ``study --jobs N`` that
died (exit code 4)."""


class UserError(Exception):
    """A problem with the user's input (config, corpus, model, paths); the message says what to change."""


class ConfigError(UserError):
    """A config file or override that cannot be used as given."""


def check(ok: bool, message: str) -> None:
    """A config section's range check: ``ConfigError(message)`` unless ``ok`` (one sentence that
    says what to change)."""
    if not ok:
        raise ConfigError(message)


class TrialsFailing(Exception):
    """A study stopped after ``study.max_failures`` trials failed in a row; what completed is
    logged and picked. The message names the last failure."""

    exit_code = 3


class WorkerDied(Exception):
    """A worker process of ``study --jobs N`` died (killed by a signal, or an error); the others
    took its slot and the study's finish ran. The message names the worker and how it ended."""

    exit_code = 4
