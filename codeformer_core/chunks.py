"""The one chunk loop: work over ``total`` items in slices, halving the slice on out-of-memory.

Used for frame chunks (``pipeline.restore_images``, the modular nodes, the command line) and for
network batches (``pipeline.run_network``) alike.
"""
from __future__ import annotations

from typing import Callable, List, Optional, TypeVar

import torch

T = TypeVar("T")


def free_device_cache(device) -> None:
    """Hand cached, unused blocks back to the device (CUDA only; a no-op elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run_in_chunks(total: int, size: int, step: Callable[[int, int], T], *, device=None,
                  check_interrupt: Optional[Callable[[], None]] = None) -> List[T]:
    """``step(start, stop)`` for consecutive slices covering ``range(total)``, in order.

    A slice that raises ``torch.OutOfMemoryError`` is retried at half the size (the cache of
    ``device`` is freed first); the smaller size is kept for the rest. A one-item slice that still
    runs out of memory re-raises. ``check_interrupt`` is called before every slice (it raises to
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
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            free_device_cache(device)
            continue
        start = stop
    return results
