"""The one error family of the core: every problem a user can fix is a ``CodeFormerError``.

Errors carry data (which file, which variant) as attributes and a plain message; each front end
(the ComfyUI nodes, the command line) adds its own hint on what to do, in its own words. The
extra built-in bases (``ValueError``, ``KeyError`` ...) keep ``except ValueError`` callers working.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple


class CodeFormerError(Exception):
    """Base of every error the core raises on purpose (bad file, bad input, wrong model)."""


class CheckpointError(CodeFormerError, ValueError):
    """A weight file that cannot be used; the message says what it is and what was expected."""


class NotAFaceModelError(CheckpointError):
    """A model file (or a loaded spandrel model) that is not a face-restoration network: what it is
    instead is in ``architecture``, ``purpose`` (spandrel's: "SR", "Restoration" ...) and ``scale``."""

    def __init__(self, name: str, architecture: str, purpose: Optional[str], scale: int = 1,
                 message: Optional[str] = None):
        self.name, self.architecture, self.purpose, self.scale = name, architecture, purpose, int(scale)
        what = {"SR": f"a {self.scale}x image upscaler", "Restoration": "a 1x image restoration model "
                "(denoising, deblurring, ...)", "Inpainting": "an inpainting model"}.get(
            purpose or "", f"a {purpose or 'non-image'} model")
        super().__init__(message or f"{name} is {what} ({architecture}), not a face-restoration model "
                                    f"(GFPGAN, RestoreFormer, CodeFormer)")


class WrongVariantError(CodeFormerError, ValueError):
    """A model of variant ``have`` was given to a step that needs variant ``want``."""

    def __init__(self, have: Optional[str], want: str, message: Optional[str] = None):
        self.have, self.want = have, want
        super().__init__(message or f"this step needs the {want} model, but the loaded model is the {have} variant")


class InputError(CodeFormerError, ValueError):
    """An image, mask or video the pipeline cannot use (shape, values, unreadable file)."""


class SettingsError(CodeFormerError, ValueError):
    """Settings or networks that do not fit together (no face detector for frames that are not
    aligned faces, an unknown face selection ...)."""


class ImageReadError(InputError):
    """An image or mask file that cannot be read."""


class VideoError(InputError):
    """A video that cannot be read or written."""


class MissingDependencyError(CodeFormerError, ImportError):
    """An optional package (``package``: spandrel, av ...) that a requested feature needs."""

    def __init__(self, package: str, message: str):
        super().__init__(message, name=package)
        self.package = package


class WeightsError(CodeFormerError):
    """A problem with a known weight file: unknown name, missing, corrupt, download failed."""


class UnknownWeightError(WeightsError, KeyError):
    """A weight name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingWeightError(WeightsError, FileNotFoundError):
    """A known weight file that is not on disk (and may not be downloaded)."""


class CorruptWeightError(WeightsError, ValueError):
    """A weight file on disk whose checksum or contents are wrong."""


class DownloadError(WeightsError, RuntimeError):
    """Every URL failed; nothing is left under the final name. ``str()`` is one line naming the
    URLs, the destination and the fix; the attributes carry the details."""

    def __init__(self, message: str, *, urls: Sequence[str] = (), dest: Optional[Path] = None,
                 errors: Sequence[Tuple[str, str]] = (), partial: Optional[Path] = None,
                 offline: bool = False) -> None:
        super().__init__(message)
        self.urls = tuple(urls)
        self.dest = dest
        self.errors = tuple(errors)    # (url, reason) per failed attempt
        self.partial = partial         # kept .part file (dropped connection), else None
        self.offline = offline         # no URL produced any HTTP answer


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class NotEnoughMemoryError(CodeFormerError, MemoryError):
    """Work that ran out of memory even one item at a time, after the chunk loop halved its chunks
    down to one (``chunks.run_in_chunks``). ``what`` names the item and its size ("frame 3
    (8000x64)"), ``item`` is its index among the items of that call."""

    def __init__(self, what: str, item: int = 0, message: Optional[str] = None):
        self.what, self.item = what, int(item)
        super().__init__(message or f"not enough memory for {what}, even on its own")
