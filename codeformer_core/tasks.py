"""The three things CodeFormer does, and every fact that hangs on each: one table.

A task names what the user wants (restore / colorize / inpaint); everything else follows from it:
the model variant that does it, the registry name of its official weight file, the fidelity
weight ``w`` and AdaIN setting its original entry point uses, and the suffix of output files.
Front ends (nodes, command line) word their own labels; the core holds no UI names.

Each fact is kept here once: ``models.codeformer.VariantConfig`` reads a variant's default ``w``
and AdaIN from this table (so ``model(x, w=None)`` and the pipeline's steps agree). This module
imports nothing heavy (``codeformer --help`` reads it without torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Task:
    name: str          # "restore" | "colorize" | "inpaint" (CLI sub-command, pipeline step)
    variant: str       # model variant that performs it (models.codeformer.VARIANTS key)
    weight: str        # registry name of the official weight file (weights/registry.json)
    suffix: str        # added to output file names by default
    default_w: float   # fidelity weight of the original entry point (0 = strongest restoration)
    adain: bool        # colour statistics of the input re-applied to the output, as the original does


TASKS: Dict[str, Task] = {
    "restore": Task("restore", "restoration", "codeformer", "_restored", default_w=0.5, adain=True),
    "colorize": Task("colorize", "colorization", "codeformer_colorization", "_colorized", default_w=0.0, adain=True),
    "inpaint": Task("inpaint", "inpainting", "codeformer_inpainting", "_inpainted", default_w=1.0, adain=False),
}

BY_VARIANT: Dict[str, Task] = {t.variant: t for t in TASKS.values()}


def task_for_variant(variant: str) -> Task:
    """The task a model variant performs (KeyError for an unknown variant)."""
    return BY_VARIANT[variant]
