"""The three things CodeFormer does, and every fact that hangs on each: one table.

A task names what the user wants (restore / colorize / inpaint); everything else follows from it:
the model variant that does it, the registry name of its official weight file, the fidelity
weight ``w`` and AdaIN setting its original entry point uses, and the suffix of output files.
Front ends (nodes, command line) word their own labels; the core holds no UI names.

``w`` and AdaIN are facts of the variant's network and are kept once, in
``models.codeformer.VARIANTS``; a task reads them from there (imported on first use, so this
module stays importable without torch, e.g. for ``codeformer --help``).
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

    @property
    def default_w(self) -> float:
        """Fidelity weight of the original entry point (0 = strongest restoration)."""
        from .models.codeformer import VARIANTS
        return VARIANTS[self.variant].default_w

    @property
    def adain(self) -> bool:
        """Colour statistics of the input re-applied to the output (AdaIN), as the original does."""
        from .models.codeformer import VARIANTS
        return VARIANTS[self.variant].default_adain


TASKS: Dict[str, Task] = {
    "restore": Task("restore", "restoration", "codeformer", "_restored"),
    "colorize": Task("colorize", "colorization", "codeformer_colorization", "_colorized"),
    "inpaint": Task("inpaint", "inpainting", "codeformer_inpainting", "_inpainted"),
}

BY_VARIANT: Dict[str, Task] = {t.variant: t for t in TASKS.values()}


def task_for_variant(variant: str) -> Task:
    """The task a model variant performs (KeyError for an unknown variant)."""
    return BY_VARIANT[variant]
