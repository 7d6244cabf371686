"""Errors a user can cause: reported as one sentence and exit code 2 by the CLI."""


class UserError(Exception):
    """A problem with the user's input (config, corpus, model, paths); the message says what to change."""
