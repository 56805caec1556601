"""Ranks under ``torchrun``: who am I, join the process group, wait for every rank.

Outside ``torchrun`` (no ``WORLD_SIZE``, or 1) the process is rank 0 of 1 and :func:`barrier` is a
no-op. The stages use gloo and only barriers, on CPU as on GPU machines.
"""

from __future__ import annotations

import datetime
import os

#: Barriers wait at most this long for the slowest rank (torchrun stops all ranks when one dies,
#: so a long limit never leaves a job hanging behind a dead rank).
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


class DistributedError(RuntimeError):
    """torchrun's environment does not describe a valid rank (the message says which variable)."""


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def init_process_group() -> None:
    """Join the ranks (gloo: only barriers are needed, on CPU as on GPU machines)."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        return
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        return
    # Under torchrun, keys of this attempt's process group get their own prefix: after a restart
    # (--max-restarts) the agent's store still holds the killed attempt's addresses, and gloo
    # would try to connect to them.
    rank, world = rank_world()
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store, timeout=BARRIER_TIMEOUT,
                          multi_tenant=not agent_store)
    dist.init_process_group("gloo", store=dist.PrefixStore(f"metaseg_pgn/attempt{restart}", store),
                            rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if rank_world()[1] <= 1:
        return
    import torch.distributed as dist

    init_process_group()
    dist.barrier()
