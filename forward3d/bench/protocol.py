"""A benchmark protocol: a small declarative object, and the registry of them.

A :class:`Protocol` says which frames a method gets (layout, stride, input size), how its output is
aligned to the ground truth before scoring, which metrics the summary reports and the published numbers
to print beside ours (from ``shared/specs/benchmarks.md``). The built-in ones are declared in
:mod:`forward3d.bench.protocols`; adding one is one declaration there (or a :func:`register_protocol`
call in a plug-in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Published", "ReconAlignment", "Protocol", "PROTOCOLS", "register_protocol", "get_protocol",
           "available_protocols", "TASKS"]

TASKS = ("trajectory", "reconstruction", "nvs", "extrapolation")


@dataclass(frozen=True)
class Published:
    """One published result under a protocol.

    Attributes:
        source: where the number comes from (``"Spann3R paper"``; ``(2nd)``: from another paper's table).
        method: the method scored.
        metrics: metric key (as in our results, e.g. ``"accuracy"``) -> value.
        note: what differs, e.g. the calibration or the sequence set.
    """

    source: str
    method: str
    metrics: dict[str, float]
    note: str = ""


@dataclass(frozen=True)
class ReconAlignment:
    """How a predicted point cloud is brought onto the ground truth before scoring.

    Attributes:
        kind: ``"median-first-icp"`` (Spann3R: scale from the median depth of camera 1, the ground-truth pose
            of camera 1, then point-to-point ICP) or ``"ransac-umeyama-icp"`` (SLAM3R: RANSAC Umeyama
            Sim(3) on pixel-aligned pairs, point-to-plane ICP, voxel downsampling, point-to-point ICP).
        icp_threshold: max correspondence distance (m) of the point-to-point ICP.
        plane_icp_threshold: max correspondence distance (m) of the point-to-plane ICP (ransac-umeyama-icp).
        voxel_size: voxel size (m) both clouds are downsampled to before the last ICP and scoring (0: none).
        conf_threshold: predicted points with a confidence at or below this are dropped (0: keep all).
        num_pairs: pixel-aligned pairs sampled for the RANSAC Umeyama fit.
        ransac_threshold: inlier distance (m) of the RANSAC Umeyama fit (ours: the papers do not give it).
        max_gt_points: ground-truth points kept (a uniform random subset of all valid pixels beyond it).
    """

    kind: Literal["median-first-icp", "ransac-umeyama-icp"] = "median-first-icp"
    icp_threshold: float = 0.1
    plane_icp_threshold: float = 0.02
    voxel_size: float = 0.0
    conf_threshold: float = 0.0
    num_pairs: int = 200_000
    ransac_threshold: float = 0.05
    max_gt_points: int = 2_000_000


@dataclass(frozen=True)
class Protocol:
    """A benchmark protocol (see the module docstring).

    Attributes:
        name: registry name (``forward3d bench NAME``).
        task: ``"trajectory"`` (ATE/RPE), ``"reconstruction"`` (accuracy/completion/NC) or ``"nvs"``.
        title: one line naming the protocol and where it comes from.
        layouts: dataset layouts it reads (``tum``, ``7scenes``, ``replica``, ``nrgbd``, ``posed``, ...).
        stride: every N-th frame of a sequence.
        max_frames: at most N frames (after the stride).
        size: input size given to the method (``WxH`` or the long side; None = native).
        crop: ``(W, H)``: the DUSt3R / Spann3R crop-resize of every frame (a window centred on the principal
            point, Lanczos resize to cover ``(W, H)``, centre crop; :func:`forward3d.data.views.crop_resize`),
            applied after ``size``; the ground truth is scored on the same cropped frames.
        score_crop: ``(W, H)``: only the centre ``W x H`` window of every frame is scored (CUT3R: the method
            sees 512x384 frames, the centre 224x224 of its point maps and of the ground truth are compared);
            None = the whole frame.
        trajectory_alignment: ``"sim3"`` (evo ``-as``) or ``"se3"`` (evo ``-a``) before the ATE.
        pair_offset: extrapolation task: frame ``i`` is lifted into frame ``i + pair_offset``.
        min_coverage: extrapolation task: pairs where the lifted frame ``i`` covers less than this fraction of
            frame ``i + pair_offset`` are left out (Hypersim: 0.8).
        recon: the point-cloud alignment (reconstruction task).
        metrics: the result keys the summary table shows, first = the primary one (plots).
        published: published results under this protocol.
        notes: limits of our implementation of it.
    """

    name: str
    task: Literal["trajectory", "reconstruction", "nvs", "extrapolation"]
    title: str
    layouts: tuple[str, ...] = ()
    stride: int = 1
    max_frames: int | None = None
    size: str | None = None
    crop: tuple[int, int] | None = None
    score_crop: tuple[int, int] | None = None
    trajectory_alignment: Literal["sim3", "se3"] = "sim3"
    pair_offset: int = 10
    min_coverage: float = 0.0
    recon: ReconAlignment = field(default_factory=ReconAlignment)
    metrics: tuple[str, ...] = ()
    published: tuple[Published, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"protocol {self.name}: expected task in {TASKS}, found {self.task!r}")
        if not self.metrics:
            raise ValueError(f"protocol {self.name}: expected at least one metric to report")
        if int(self.stride) < 1:
            raise ValueError(f"protocol {self.name}: expected stride >= 1, found {self.stride}")
        for p in self.published:
            unknown = set(p.metrics) - set(self.metrics)
            if unknown:
                raise ValueError(f"protocol {self.name}: published {p.method} numbers for metrics "
                                 f"{sorted(unknown)} the protocol does not report ({list(self.metrics)})")


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol, *, overwrite: bool = False) -> Protocol:
    """Add ``protocol`` to :data:`PROTOCOLS` (ValueError when the name is taken and not ``overwrite``)."""
    if not isinstance(protocol, Protocol):
        raise TypeError(f"register_protocol: expected a Protocol, found {type(protocol).__name__}")
    if protocol.name in PROTOCOLS and not overwrite and PROTOCOLS[protocol.name] != protocol:
        raise ValueError(f"register_protocol: {protocol.name!r} is already registered (pass overwrite=True)")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def _builtins() -> None:
    import forward3d.bench.protocols  # noqa: F401  (registers the built-in protocols)


def available_protocols() -> list[str]:
    _builtins()
    return sorted(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name`` (ValueError listing the known ones)."""
    _builtins()
    if name not in PROTOCOLS:
        raise ValueError(f"unknown benchmark protocol {name!r}: expected one of {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
