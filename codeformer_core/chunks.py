"""The one chunk loop: work over ``total`` items in slices, halving the slice on out-of-memory.

Used for frame chunks (``pipeline.restore_images``, the modular nodes, the command line) and for
network batches (``pipeline.run_network``) alike. Chunk sizes come from a memory budget the
caller sets (``memory_budget``, ``chunk_size_for``), never from what happens to be free.
"""
from __future__ import annotations

import re
from typing import Callable, List, Optional, TypeVar, Union

import torch

from .errors import NotEnoughMemoryError

T = TypeVar("T")

DEFAULT_MEMORY_BUDGET = 2 * 2 ** 30  # bytes of working memory for frame chunks (model weights not included)

# What an allocator's refusal says when it is not a torch.OutOfMemoryError: the CPU allocator
# raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory: you tried to allocate
# ... bytes"); some backends word it "not enough memory".
_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure on any device: torch.OutOfMemoryError (CUDA, MPS), the CPU
    allocator's RuntimeError, MemoryError (numpy, and NotEnoughMemoryError from an inner loop)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OUT_OF_MEMORY)


def free_device_cache(device) -> None:
    """Hand cached, unused blocks back to the device (CUDA only; a no-op elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run_in_chunks(total: int, size: int, step: Callable[[int, int], T], *, device=None,
                  check_interrupt: Optional[Callable[[], None]] = None,
                  describe: Optional[Callable[[int], str]] = None) -> List[T]:
    """``step(start, stop)`` for consecutive slices covering ``range(total)``, in order.

    A slice that runs out of memory (``is_out_of_memory``) is retried at half the size (the cache
    of ``device`` is freed first); the smaller size is kept for the rest. A one-item slice that
    still runs out of memory raises ``NotEnoughMemoryError`` naming the item by ``describe(index)``
    ("item 3 of 8" without it). ``check_interrupt`` is called before every slice (it raises to
    stop). Returns the step results in order.
    """
    results: List[T] = []
    start, size = 0, max(1, int(size))
    while start < total:
        if check_interrupt is not None:
            check_interrupt()
        stop = min(total, start + size)
        try:
            results.append(step(start, stop))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if size == 1:
                what = describe(start) if describe is not None else f"item {start + 1} of {total}"
                raise NotEnoughMemoryError(what, start) from e
            size = max(1, size // 2)
            free_device_cache(device)
            continue
        start = stop
    return results


_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def parse_memory(text: Union[str, float, int]) -> int:
    """A memory size as a user writes it: "3G", "1.5g", "800M", "2GB", "512MiB", or a number of
    bytes; ValueError for anything else or a size below 64 MiB (too small to run anything)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if m is None:
        raise ValueError(f"{text!r} is not a memory size; write it like 3G, 1.5G or 800M")
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size < 64 * 2 ** 20:
        raise ValueError(f"{text!r} is too small a memory budget; give at least 64M")
    return size


def chunk_size_for(bytes_per_item: float, budget: Optional[int] = None, most: int = 64) -> int:
    """Items per chunk so that ``bytes_per_item`` times the chunk stays within ``budget`` bytes
    (``DEFAULT_MEMORY_BUDGET`` when None); at least 1, at most ``most``."""
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    return int(max(1, min(int(most), budget // max(1, int(bytes_per_item)))))
