"""What the command line tells the user: exit codes, messages, progress bars, error lines."""
from __future__ import annotations

import sys

from ..errors import CodeFormerError, first_line

EXIT_OK = 0
EXIT_ERROR = 1       # nothing (or the only input) could be processed, or a bad setting
EXIT_USAGE = 2       # argparse: unknown option, bad value
EXIT_PARTIAL = 3     # a folder where some files failed and at least one succeeded
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0  every input was processed (files where no face was found count as processed)
  1  error: bad input, missing/corrupt weights, download failed, or every file failed
  2  bad command-line usage
  3  partial failure: a folder where some files failed (each is reported on stderr,
     the others were written)
  130 interrupted (Ctrl-C); no half-written output is left under a final name
"""


class UserError(CodeFormerError):
    """A problem with the command line's own settings; reported as one line without a traceback."""


# Errors whose message is meant for the user (one line, no traceback): every error the core
# raises on purpose, and the operating system's complaints about paths.
USER_ERRORS = (CodeFormerError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class Out:
    """stderr/stdout writer that does not tear tqdm bars apart; ``quiet`` silences info."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._write(msg, sys.stderr)

    def warn(self, msg: str) -> None:
        self._write(f"codeformer: warning: {msg}", sys.stderr)

    def result(self, msg: str) -> None:
        self._write(msg, sys.stdout)

    @staticmethod
    def _write(msg: str, stream) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(msg, file=stream)
        except ImportError:  # pragma: no cover
            print(msg, file=stream)


def progress_bar(total=None, desc="", unit="it", quiet=False, leave=True, position=None):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, position=position,
                disable=True if quiet else None, dynamic_ncols=True, file=sys.stderr)


def describe(e: BaseException) -> str:
    """The line an error is reported with: its own message for user errors, with the type else."""
    from ..chunks import is_out_of_memory
    if is_out_of_memory(e) and not isinstance(e, USER_ERRORS):  # an allocator's own words: never shown
        return "out of memory; lower --max-memory or -s, or set --bg-tile"
    if isinstance(e, USER_ERRORS):
        return first_line(e)
    return f"{type(e).__name__}: {first_line(e)}"
