"""The one error type users see: a problem with their input, reported in one line."""


class UserError(Exception):
    """Bad input (config, data, checkpoint, model file). The CLI prints it and exits 2."""
