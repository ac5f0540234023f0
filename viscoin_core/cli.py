"""The one error path of every `python -m viscoin_core...` command.

`run(main)` calls `main(argv)` and turns what a user can cause into one line on stderr,

    error: <what went wrong, naming the parameter, file or iteration>

with exit code 2: a bad parameter or parameter file (ConfigError), bad data (DataError), a missing
file, a refused or non-finite checkpoint, a training run that diverged (NaN/inf). A full disk and
other operating-system errors are one line with exit code 1, and so is an unexpected exception (a
bug), with a hint how to see its traceback. The traceback is shown only with `--debug` anywhere on
the command line or with the environment variable VISCOIN_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

DEBUG_ENV = "VISCOIN_DEBUG"
DEBUG_FLAG = "--debug"
USAGE_ERROR, RUN_ERROR = 2, 1


def debug_requested(argv: list[str]) -> bool:
    """True with --debug in argv or VISCOIN_DEBUG set to anything but '', '0' or 'false'."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(err: BaseException) -> str:
    """The exception's message on one line (whitespace runs, newlines included, become one space)."""
    text = " ".join(str(err).split())
    if isinstance(err, (KeyError,)) or not text:
        text = f"{type(err).__name__}: {text}".rstrip(": ")
    return text


def user_errors() -> tuple[type, ...]:
    """Exception types a user's input causes (imported here so that `cli` itself stays light)."""
    from viscoin_core.config import ConfigError
    from viscoin_core.runs import CheckpointError, NonFiniteLoss
    # ConfigError, CheckpointError, the data's DataError and the network-pickle errors are ValueErrors
    return (ConfigError, CheckpointError, NonFiniteLoss, ValueError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError)


def exit_code(err: BaseException) -> int:
    """2 for a user's mistake (user_errors: bad values, files, data, a diverged run), 1 for everything else."""
    return USAGE_ERROR if isinstance(err, user_errors()) else RUN_ERROR


def close_progress_bars() -> None:
    """Close the progress bars an exception left open, so that the error line is the last line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> int:
    """Call `main(argv)` (default: sys.argv[1:], without --debug) and return its exit code.

    `main` may return an int (its exit code), or anything else (0). Exceptions become one line on
    stderr and exit code 2 or 1 (see the module docstring); with --debug or VISCOIN_DEBUG=1 they
    propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        result = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted; a training run resumes from its last checkpoint", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (every error ends in one line unless debugging)
        if debug:
            raise
        close_progress_bars()
        code = exit_code(err)
        message = one_line(err)
        if code == RUN_ERROR and not isinstance(err, OSError):
            message = (f"unexpected {type(err).__name__}: {message} (run again with {DEBUG_FLAG} or "
                       f"{DEBUG_ENV}=1 for the traceback)")
        print(f"error: {message}", file=sys.stderr)
        return code
    return result if isinstance(result, int) else 0
