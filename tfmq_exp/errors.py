"""User-facing errors: raised for bad input; the CLI prints their message on one line, no traceback."""


class UserError(Exception):
    """Something the user can fix (a config value, a missing file); the message says what and how."""


class MissingWeightsError(UserError):
    """Model or metric weights are not available locally (nothing is downloaded at run time here)."""


class CacheMismatchError(UserError):
    """A cache or artifact does not match the model, config or sampler it is used with."""
