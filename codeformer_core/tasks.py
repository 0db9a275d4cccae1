"""The three things CodeFormer does, and every fact that hangs on each: one table.

A task names what the user wants (restore / colorize / inpaint); everything else follows from it:
the model variant that does it, the registry name of its official weight file, the fidelity
weight ``w`` and AdaIN setting its original entry point uses, and the suffix of output files.
Front ends (nodes, command line) word their own labels; the core holds no UI names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Task:
    name: str          # "restore" | "colorize" | "inpaint" (CLI sub-command, pipeline step)
    variant: str       # model variant that performs it (models.codeformer.VARIANTS key)
    weight: str        # registry name of the official weight file (weights/registry.json)
    default_w: float   # fidelity weight of the original entry point (0 = strongest restoration)
    adain: bool        # colour statistics of the input re-applied to the output (AdaIN)
    suffix: str        # added to output file names by default


TASKS: Dict[str, Task] = {
    "restore": Task("restore", "restoration", "codeformer", 0.5, True, "_restored"),
    "colorize": Task("colorize", "colorization", "codeformer_colorization", 0.0, True, "_colorized"),
    "inpaint": Task("inpaint", "inpainting", "codeformer_inpainting", 1.0, False, "_inpainted"),
}

BY_VARIANT: Dict[str, Task] = {t.variant: t for t in TASKS.values()}


def task_for_variant(variant: str) -> Task:
    """The task a model variant performs (KeyError for an unknown variant)."""
    return BY_VARIANT[variant]
