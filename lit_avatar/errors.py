"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input (a path, key, argument or file content).

    The message must name the thing at fault and say what was expected.
    """
