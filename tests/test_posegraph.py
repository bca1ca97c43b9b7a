"""The keyframe pose graph: open3d SE(3) optimisation with line process, and the Sim(3) path."""

from __future__ import annotations

import numpy as np
import pytest

from forward3d.geometry.se3 import inverse_sim3, make_sim3, so3_exp
from forward3d.pipelines.posegraph import PoseGraph


def _circle(n: int) -> np.ndarray:
    """``[n, 4, 4]`` c2w on a 1 m circle, looking inward, one full turn (the last pose next to the first)."""
    out = []
    for k in range(n):
        a = 2 * np.pi * k / n
        R = so3_exp(np.array([0.0, a, 0.0]))
        out.append(make_sim3(R, np.array([np.cos(a), 0.0, np.sin(a)])))
    return np.stack(out)


def _drifting_graph(gt: np.ndarray, rng, scale_drift: float = 0.0, info=None) -> PoseGraph:
    """Odometry edges with a systematic bias (the estimate drifts), nodes chained from them."""
    g = PoseGraph()
    bias = make_sim3(so3_exp(np.array([0.0, 0.002, 0.001])), np.array([0.003, 0.0, 0.0]), 1.0 + scale_drift)
    c2w = gt[0].copy()
    g.add_node(c2w)
    info = np.diag([1e3] * 6) if info is None else info
    for k in range(1, len(gt)):
        meas = inverse_sim3(gt[k - 1]) @ gt[k] @ bias  # c2w_{k-1}^-1 c2w_k, biased
        c2w = c2w @ meas
        g.add_node(c2w)
        g.add_edge(k, k - 1, meas, info)  # source k -> target k-1: w2c_{k-1} c2w_k
    return g


def _err(g: PoseGraph, gt: np.ndarray) -> float:
    return float(np.linalg.norm(np.stack(g.c2w)[:, :3, 3] - gt[:, :3, 3], axis=1).max())


@pytest.mark.parametrize("solver", ["open3d", "sim3"])
def test_loop_edge_removes_drift_and_a_wrong_loop_is_pruned(solver):
    if solver == "open3d":
        pytest.importorskip("open3d")
    rng = np.random.default_rng(0)
    gt = _circle(40)
    g = _drifting_graph(gt, rng)
    before = _err(g, gt)
    info = np.diag([1e3] * 3 + [1e3] * 3)
    g.add_edge(len(gt) - 1, 0, inverse_sim3(gt[0]) @ gt[-1], info, loop=True)  # true loop
    wrong = inverse_sim3(gt[10]) @ gt[30] @ make_sim3(np.eye(3), np.array([0.6, 0.0, 0.3]))
    g.add_edge(30, 10, wrong, info, loop=True)  # a loop that is not there
    res = g.optimize(max_correspondence_distance=0.05) if solver == "open3d" else g.optimize_sim3(scale_information=1e3)
    after = _err(g, gt)
    assert before > 0.05
    assert after < 0.5 * before, (before, after)
    assert res.pruned == [(30, 10)] and res.loops_kept == 1
    assert [(e.source, e.target) for e in g.loop_edges] == [(len(gt) - 1, 0)]
    assert np.allclose(g.c2w[0], gt[0], atol=1e-6)  # the reference node stays


def test_sim3_recovers_scale_drift():
    rng = np.random.default_rng(1)
    gt = _circle(30)
    g = _drifting_graph(gt, rng, scale_drift=0.003, info=np.diag([1e3] * 6 + [1e2]))
    before = _err(g, gt)
    g.add_edge(len(gt) - 1, 0, inverse_sim3(gt[0]) @ gt[-1], np.diag([1e3] * 6 + [1e3]), loop=True)
    g.optimize_sim3()
    assert _err(g, gt) < 0.35 * before, (before, _err(g, gt))


def test_bad_input():
    g = PoseGraph()
    g.add_node(np.eye(4))
    with pytest.raises(ValueError, match="node ids"):
        g.add_edge(0, 1, np.eye(4), np.eye(6))
    g.add_node(np.eye(4))
    with pytest.raises(ValueError, match=r"\[6, 6\] or \[7, 7\]"):
        g.add_edge(0, 1, np.eye(4), np.eye(5))
    with pytest.raises(ValueError, match=r"finite \[4, 4\]"):
        g.add_node(np.full((4, 4), np.nan))
    assert g.optimize().loops_kept == 0  # no edges: nothing to do
