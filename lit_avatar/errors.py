"""User-facing errors: the CLI prints these as one line, never as a traceback."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """A mistake in the user's input (a path, key, argument or file content).

    The message must name the thing at fault and say what was expected.
    """


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Exit with main()'s code; a UserError becomes one `error: ...` line and exit code 2 (anything else
    is a bug and keeps its traceback)."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
