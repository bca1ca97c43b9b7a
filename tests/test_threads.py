"""forward3d.threads: worker threads with one intra-op thread each."""

import threading

import pytest
import torch

from forward3d.threads import default_workers, intra_op_threads, run_workers


def test_run_workers_order_threads_and_restore():
    n0 = torch.get_num_threads()
    seen, done = [], []

    def fn(x):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return x * x

    assert run_workers(fn, list(range(7)), 3, on_done=done.append) == [x * x for x in range(7)]
    assert sorted(done) == list(range(7)) and all(t == 1 for _, t in seen)
    assert torch.get_num_threads() == n0
    seen.clear()
    assert run_workers(fn, [2, 3], 1) == [4, 9]  # one worker: in the calling thread, threads unchanged
    assert {i for i, _ in seen} == {threading.get_ident()} and seen[0][1] == n0


def test_run_workers_raises_and_restores():
    n0 = torch.get_num_threads()

    def fn(x):
        if x == 2:
            raise RuntimeError("item 2 failed")
        return x

    with pytest.raises(RuntimeError, match="item 2"):
        run_workers(fn, list(range(5)), 2)
    assert torch.get_num_threads() == n0


def test_default_workers_and_intra_op_threads():
    n0 = torch.get_num_threads()
    assert default_workers(torch.device("cpu")) == n0 and default_workers(torch.device("cpu"), 0) == n0
    assert default_workers(torch.device("cuda")) == 1 and default_workers(torch.device("cpu"), 3) == 3
    with pytest.raises(ValueError, match="mine must be positive"):
        default_workers(torch.device("cpu"), -1, "mine")
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n0
