"""A keyframe pose graph with robust global optimisation, reusable by every back-end.

Nodes are camera-to-world poses (``c2w``, OpenCV axes); an edge ``(source, target)`` holds the measured
``source_to_target = w2c_target @ c2w_source`` (what a tracker or a registration returns) and its
``[6, 6]`` information matrix (rotation first, then translation, the order open3d uses; for example
``open3d.t.pipelines.odometry.compute_odometry_information_matrix``). Odometry edges are trusted;
loop-closure edges are "uncertain": the optimiser may switch them off.

Two solvers:

- :meth:`PoseGraph.optimize` (metric back-ends, SE(3)): open3d's Levenberg-Marquardt global
  optimisation with the line process (``open3d.pipelines.registration.global_optimization``); loop
  edges whose line-process weight falls below ``edge_prune_threshold`` are pruned.
- :meth:`PoseGraph.optimize_sim3` (up-to-scale back-ends such as ``sfm`` / ``slam3r``): the same graph
  with one extra degree of freedom per node (scale), solved by sparse least squares
  (``scipy.optimize.least_squares``) with the same robust weighting of loop edges (iteratively
  re-weighted, Geman-McClure like open3d's line process). Edge measurements may then be similarity
  transforms and the information is ``[7, 7]`` (rotation, translation, log-scale) or ``[6, 6]`` plus
  ``scale_information``.

Example::

    graph = PoseGraph()
    a = graph.add_node(c2w_a); b = graph.add_node(c2w_b)
    graph.add_edge(a, b, w2c_b @ c2w_a_measured, info)                 # odometry
    graph.add_edge(c, a, measured, info, loop=True)                  # loop closure
    result = graph.optimize()                                        # graph.c2w is updated
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from forward3d.geometry.se3 import inverse_sim3, so3_exp, so3_log, split_sim3

__all__ = ["PoseGraph", "PoseGraphEdge", "OptimizeResult"]

log = logging.getLogger(__name__)


@dataclass
class PoseGraphEdge:
    """A relative-pose measurement between two nodes.

    Attributes:
        source, target: node ids.
        source_to_target: ``[4, 4]`` measured ``w2c_target @ c2w_source`` (SE(3), or Sim(3) for
            :meth:`PoseGraph.optimize_sim3`).
        information: ``[6, 6]`` (rotation, translation) or ``[7, 7]`` (+ log-scale) information matrix.
        loop: a loop-closure ("uncertain") edge that the robust optimiser may prune.
    """

    source: int
    target: int
    source_to_target: np.ndarray
    information: np.ndarray
    loop: bool = False


@dataclass
class OptimizeResult:
    """What a global optimisation did.

    Attributes:
        moved_max: largest node translation change (in the graph's units).
        loops_kept, loops_pruned: loop edges kept / switched off by the robust weighting.
        pruned: the pruned loop edges ``(source, target)``.
        time_s: wall time of the optimisation.
    """

    moved_max: float
    loops_kept: int
    loops_pruned: int
    pruned: list[tuple[int, int]] = field(default_factory=list)
    time_s: float = 0.0


def _check_T(name: str, T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"PoseGraph {name}: expected a finite [4, 4] transform, found shape {list(T.shape)}")
    return T


class PoseGraph:
    """Keyframe poses (``c2w``) and relative-pose edges; see the module docstring.

    Attributes:
        c2w: ``[N]`` list of ``[4, 4]`` node poses (updated in place by the optimisers).
        edges: the edges (loop edges pruned by an optimisation are removed).
    """

    def __init__(self) -> None:
        self.c2w: list[np.ndarray] = []
        self.edges: list[PoseGraphEdge] = []

    def __len__(self) -> int:
        return len(self.c2w)

    def add_node(self, c2w: np.ndarray) -> int:
        """Append a node with its current estimate ``c2w`` ``[4, 4]``; returns its id."""
        self.c2w.append(_check_T("node c2w", c2w).copy())
        return len(self.c2w) - 1

    def add_edge(self, source: int, target: int, source_to_target: np.ndarray, information: np.ndarray,
                 loop: bool = False) -> PoseGraphEdge:
        """Add a measurement ``source_to_target`` ``[4, 4]`` with its information ``[6, 6]`` / ``[7, 7]``."""
        n = len(self.c2w)
        if not (0 <= source < n and 0 <= target < n) or source == target:
            raise ValueError(f"PoseGraph edge: expected two different node ids in [0, {n}), found {source}, {target}")
        info = np.asarray(information, dtype=np.float64)
        if info.shape not in ((6, 6), (7, 7)) or not np.isfinite(info).all():
            raise ValueError(f"PoseGraph edge {source}->{target}: expected a finite [6, 6] or [7, 7] information "
                             f"matrix, found shape {list(info.shape)}")
        edge = PoseGraphEdge(int(source), int(target), _check_T("edge transform", source_to_target).copy(),
                             0.5 * (info + info.T), bool(loop))
        self.edges.append(edge)
        return edge

    @property
    def loop_edges(self) -> list[PoseGraphEdge]:
        return [e for e in self.edges if e.loop]

    # ----------------------------------------------------------------------------------------------
    def optimize(self, max_correspondence_distance: float = 0.03, edge_prune_threshold: float = 0.25,
                 preference_loop_closure: float = 1.0, reference_node: int = 0,
                 max_iterations: int = 100) -> OptimizeResult:
        """Robust SE(3) optimisation with open3d (Levenberg-Marquardt + line process); updates :attr:`c2w`.

        Args:
            max_correspondence_distance: the distance (metres) the information matrices were computed
                with; it sets the line-process scale.
            edge_prune_threshold: loop edges whose line-process weight ends below this are pruned.
            preference_loop_closure: weight of loop edges against odometry edges.
            reference_node: the node held fixed (gauge).
            max_iterations: Levenberg-Marquardt iterations.
        """
        from forward3d.pipelines.tsdf import import_open3d

        o3d = import_open3d()
        reg = o3d.pipelines.registration
        t0 = time.perf_counter()
        before = np.stack(self.c2w) if self.c2w else np.zeros((0, 4, 4))
        if not self.edges:
            return OptimizeResult(0.0, 0, 0, time_s=0.0)
        graph = reg.PoseGraph()
        for T in self.c2w:
            graph.nodes.append(reg.PoseGraphNode(T))
        for e in self.edges:
            graph.edges.append(reg.PoseGraphEdge(e.source, e.target, e.source_to_target,
                                                 e.information[:6, :6], uncertain=e.loop))
        option = reg.GlobalOptimizationOption(max_correspondence_distance=float(max_correspondence_distance),
                                              edge_prune_threshold=float(edge_prune_threshold),
                                              preference_loop_closure=float(preference_loop_closure),
                                              reference_node=int(reference_node))
        criteria = reg.GlobalOptimizationConvergenceCriteria()
        criteria.max_iteration = int(max_iterations)
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            reg.global_optimization(graph, reg.GlobalOptimizationLevenbergMarquardt(), criteria, option)
        self.c2w = [np.asarray(n.pose, np.float64).copy() for n in graph.nodes]
        kept = {(int(e.source_node_id), int(e.target_node_id)) for e in graph.edges if e.uncertain}
        pruned = [(e.source, e.target) for e in self.edges if e.loop and (e.source, e.target) not in kept]
        self.edges = [e for e in self.edges if not e.loop or (e.source, e.target) in kept]
        moved = float(np.linalg.norm(np.stack(self.c2w)[:, :3, 3] - before[:, :3, 3], axis=1).max())
        return OptimizeResult(moved, len(kept), len(pruned), pruned, time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------------------
    def optimize_sim3(self, scale_information: float = 1e4, loop_chi2: float = 1.0,
                      edge_prune_threshold: float = 0.25, reference_node: int = 0,
                      reweight_iterations: int = 4) -> OptimizeResult:
        """Robust Sim(3) optimisation (one scale per node) for up-to-scale back-ends; updates :attr:`c2w`.

        Node poses and edge measurements may be similarity transforms (``x -> s R x + t``). The
        residual of an edge is ``[log R, t, log s]`` of ``inverse(Z) @ inverse(S_target) @ S_source``
        whitened by its information (a ``[6, 6]`` information gets ``scale_information`` for the
        log-scale). Loop edges get the weight ``(mu / (mu + chi2))^2`` with ``mu = loop_chi2`` (``chi2``
        = the whitened squared residual; the weight is 1/4 at ``chi2 = loop_chi2``), re-estimated
        ``reweight_iterations`` times; those below ``edge_prune_threshold`` are pruned.
        """
        from scipy.optimize import least_squares
        from scipy.sparse import lil_matrix

        t0 = time.perf_counter()
        n = len(self.c2w)
        if not self.edges or n < 2:
            return OptimizeResult(0.0, len(self.loop_edges), 0, time_s=0.0)
        s0, R0, t0_ = split_sim3(np.stack(self.c2w))
        free = np.array([i for i in range(n) if i != reference_node])
        col = -np.ones(n, dtype=np.int64)
        col[free] = np.arange(len(free))
        src = np.array([e.source for e in self.edges])
        tgt = np.array([e.target for e in self.edges])
        Zinv = inverse_sim3(np.stack([e.source_to_target for e in self.edges]))
        L = []
        for e in self.edges:
            info = e.information
            if info.shape == (6, 6):
                info = np.block([[info, np.zeros((6, 1))], [np.zeros((1, 6)), np.full((1, 1), float(scale_information))]])
            L.append(np.linalg.cholesky(info + 1e-9 * np.eye(7)).T)  # r^T info r = |L r|^2
        L = np.stack(L)
        loop = np.array([e.loop for e in self.edges])
        m = len(self.edges)

        def nodes(x: np.ndarray) -> np.ndarray:
            d = np.zeros((n, 7))
            d[free] = x.reshape(-1, 7)
            R = so3_exp(d[:, :3]) @ R0
            S = np.zeros((n, 4, 4))
            S[:, :3, :3] = (s0 * np.exp(d[:, 6]))[:, None, None] * R
            S[:, :3, 3] = t0_ + d[:, 3:6]
            S[:, 3, 3] = 1.0
            return S

        def edge_residuals(x: np.ndarray) -> np.ndarray:
            S = nodes(x)
            E = Zinv @ inverse_sim3(S[tgt]) @ S[src]
            s, R, t = split_sim3(E)
            r = np.concatenate([so3_log(R), t, np.log(s)[:, None]], 1)
            return np.einsum("eij,ej->ei", L, r)  # [M, 7] whitened

        sparsity = lil_matrix((7 * m, 7 * len(free)), dtype=np.int8)
        for k in range(m):
            for node in (src[k], tgt[k]):
                if col[node] >= 0:
                    sparsity[7 * k:7 * k + 7, 7 * col[node]:7 * col[node] + 7] = 1
        weights = np.ones(m)
        mu = float(loop_chi2)
        x = np.zeros(7 * len(free))
        for _ in range(max(1, int(reweight_iterations))):
            sw = np.sqrt(weights)[:, None]
            res = least_squares(lambda v: (edge_residuals(v) * sw).ravel(), x, jac_sparsity=sparsity,
                                method="trf", x_scale="jac", max_nfev=200)
            x = res.x
            log.debug("sim3 solve: cost %.3g, status %d, nfev %d", res.cost, res.status, res.nfev)
            chi2 = (edge_residuals(x) ** 2).sum(1)
            new = np.where(loop, (mu / (mu + chi2)) ** 2, 1.0)
            if np.allclose(new, weights, atol=1e-3):
                weights = new
                break
            weights = new
        prune = loop & (weights < edge_prune_threshold)
        if prune.any():  # final solve without the pruned loops
            weights = np.where(prune, 0.0, weights)
            sw = np.sqrt(weights)[:, None]
            x = least_squares(lambda v: (edge_residuals(v) * sw).ravel(), x, jac_sparsity=sparsity,
                              method="trf", x_scale="jac", max_nfev=200).x
        before = np.stack(self.c2w)
        S = nodes(x)
        self.c2w = [T.copy() for T in S]
        pruned = [(e.source, e.target) for e, p in zip(self.edges, prune) if p]
        self.edges = [e for e, p in zip(self.edges, prune) if not p]
        moved = float(np.linalg.norm(S[:, :3, 3] - before[:, :3, 3], axis=1).max())
        return OptimizeResult(moved, int((loop & ~prune).sum()), int(prune.sum()), pruned, time.perf_counter() - t0)
