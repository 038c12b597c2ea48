"""Errors the command line turns into one clear line and a non-zero exit."""


class UserError(Exception):
    """A bad setting, a missing input or a missing credential: says what to do."""
