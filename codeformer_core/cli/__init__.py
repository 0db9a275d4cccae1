"""The ``codeformer`` command line (``python -m codeformer_core`` runs the same).

    args.py         the options of ``restore | colorize | inpaint`` and ``weights ...``
    settings.py     the task options read once into a frozen ``Settings`` (nothing reads argparse after it)
    plan.py         inputs -> outputs (a file, a folder), the cheap checks before any network loads
    engine.py       the networks loaded once (``Session``) and the one ``pipeline.restore_images`` call
    images.py       one image file; video.py: one video file, chunk by chunk
    run.py          a task command: plan, load once, process each input, summarise
    cluster.py      the same per-file work on a Ray actor pool (--ray)
    weights_cmd.py  the models folder, fetching on first use, ``weights list|download|verify|convert``
    console.py      exit codes, messages, progress bars, the one-line error report

Everything heavy lives in the rest of ``codeformer_core``; this package parses options, streams
files through the pipeline and reports. Errors the core raises on purpose (``CodeFormerError``)
are reported as one line without a traceback; anything else says to rerun with ``--debug``.
"""
from __future__ import annotations

import sys
import traceback
from typing import Optional, Sequence

from .console import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, USER_ERRORS,
                      UserError, describe)
from .memory import keep_freed_memory_for_reuse

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_PARTIAL", "EXIT_INTERRUPTED", "UserError"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``codeformer`` script; returns the exit code (see --help)."""
    if argv is None:  # this process is the `codeformer` command (tests call main(argv)): cli/memory.py
        keep_freed_memory_for_reuse()
    from .args import build_parser
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print("codeformer: error: choose a command (restore, colorize, inpaint, weights)", file=sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("codeformer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        elif not isinstance(e, USER_ERRORS):
            print("codeformer: (unexpected error; run with --debug for the traceback)", file=sys.stderr)
        print(f"codeformer: error: {describe(e)}", file=sys.stderr)
        return EXIT_ERROR
