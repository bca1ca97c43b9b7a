"""CPU parallelism by Python worker threads that each run ONE torch intra-op thread.

On a shared or loaded CPU, torch's OpenMP intra-op threads make many small ops slower with 2 threads than
with 1: every op synchronises the team, and a spinning thread waits for a descheduled sibling (measured:
the rasterizer's compositing, the dense MVS at 26 s vs 4.2 s per keyframe at load 10). Independent chunks
of work (tile groups, reference views) dealt to Python threads scale instead: torch releases the GIL inside
its kernels, and one intra-op thread per worker needs no team barrier. :func:`run_workers` sets the
process's intra-op thread count to 1 for the duration of the call and restores it after.

Thread limits as context managers: :func:`intra_op_threads` (torch) and :func:`open3d_threads` (open3d's
oneTBB pool).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from typing import TypeVar

import torch

__all__ = ["default_workers", "intra_op_threads", "open3d_threads", "run_workers"]

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def default_workers(device: torch.device, workers: int | None = None, name: str = "workers") -> int:
    """``workers`` checked (> 0), or by default the intra-op thread count on the CPU and 1 on a GPU (whose
    kernels are asynchronous anyway)."""
    if workers is None or workers == 0:
        return torch.get_num_threads() if device.type == "cpu" else 1
    if workers < 0:
        raise ValueError(f"{name} must be positive (or 0 = automatic), found {workers}")
    return int(workers)


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count after (a process-wide
    setting: other Python threads running torch ops meanwhile share it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def open3d_threads(n: int) -> Iterator[None]:
    """Limit open3d (oneTBB) to ``n`` CPU threads inside the block (0: no limit); restores the
    previous limit afterwards. Without open3d it does nothing (the run reports the missing extra)."""
    try:
        import open3d as o3d

        util = o3d.utility
        prev = util.get_max_threads()
        util.set_max_threads(int(n))
    except (ImportError, AttributeError):  # open3d missing, or older than set_max_threads
        yield
        return
    try:
        yield
    finally:
        util.set_max_threads(prev)


def _pool(n: int) -> ThreadPoolExecutor:
    with _LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix=f"forward3d-w{n}")
        return pool


def run_workers(fn: Callable[[T], R], items: Sequence[T], workers: int,
                on_done: Callable[[int], None] | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``min(workers, len(items))`` threads with one intra-op thread each.

    The items must share nothing they write. Results come back in the order of ``items``; ``on_done(i)`` is
    called in the calling thread as item ``i`` finishes (a progress bar). With one worker (or one item) the
    items run in the calling thread with the intra-op thread count unchanged. An exception in ``fn`` is
    raised here after the running items finish.
    """
    n = min(int(workers), len(items))
    if n <= 1:
        out = []
        for i, x in enumerate(items):
            out.append(fn(x))
            if on_done is not None:
                on_done(i)
        return out
    pool = _pool(n)
    with intra_op_threads(1):
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        results: list = [None] * len(items)
        try:
            for f in as_completed(futures):
                i = futures[f]
                results[i] = f.result()
                if on_done is not None:
                    on_done(i)
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            raise
    return results
