"""Thread counts changed only inside a context that gives the caller its own back."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the caller's count (also when
    the block raises).

    Parameters
    ----------
    n : int
        Intra-op threads inside the block (at least 1).
    """
    import torch

    if n < 1:
        raise ValueError(f"torch_threads: need at least 1 thread, got {n}")
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
