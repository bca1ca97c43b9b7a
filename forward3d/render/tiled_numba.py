"""Compiled CPU compositing kernel (numba) for the tiled rasterizer: one fused loop per tile.

Same inputs as :func:`forward3d.render.tiled.composite_tiled` (the projection, the features and the sorted
Gaussian-tile lists of :func:`forward3d.render.tiled.intersect_tiles` are reused); only the compositing
and its backward are replaced.

Forward, per tile (tiles dealt round-robin to ``n`` threads: one ``prange`` iteration per thread, so that
neighbouring tiles, which have similar list lengths, go to different threads), Gaussians front to back,
and for each one only the pixels of the tile inside its box ``|x - mx| <= extent_x`` (the same box as the
tile intersection; outside it ``alpha < 1/255``): the spec's per-pixel step written literally, as
:func:`forward3d.render.reference.composite_reference`::

    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy            (dx = mx - x, skipped if sigma < 0)
    alpha = min(MAX_ALPHA, o exp(-sigma))              (skipped if alpha < 1/255)
    stop before the Gaussian when T (1 - alpha) <= T_EPS, else acc += T alpha f, T *= 1 - alpha

It writes ``acc`` ``[C, H, W, F]``, the final ``T`` ``[C, H, W]`` and, for the backward, ``last``
``[C, H, W]`` (one past the position in the tile's list of the pixel's last composited Gaussian). A tile
stops when its list ends or all of its pixels have stopped.

Backward (gsplat's recurrence), per tile, Gaussians back to front from the largest ``last`` of the tile:
``T`` before a Gaussian is recovered as ``T_after / (1 - alpha)``, and the "what lies behind" sum
``S = sum_{j later} T_j alpha_j <f_j, dL/dacc> + T_final dL/dT`` is carried per pixel, so that
``dL/dalpha = T <f, dL/dacc> - S / (1 - alpha)``. Each (tile, Gaussian) pair writes its summed gradient
(``means2d``, conic, opacity, features) to its own row of a ``[M, 6 + F]`` buffer (no races, and the result
does not depend on the thread count); one compiled pass sums the rows per Gaussian in list order.

numba is optional (``pip install forward3d[fast]``): :func:`numba_available` tells whether it imports.
The kernels are compiled on the first call per dtype (float32, float64) and cached on disk
(``cache=True``: later processes load them). The thread count follows ``torch.get_num_threads()``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import numpy as np
import torch
from torch import Tensor

from .common import MAX_ALPHA, T_EPS
from .projection import ALPHA_THRESHOLD

FEAT = 4  # the kernels' feature channels (forward3d.render._numba_kernels.FEAT): features are padded to it

__all__ = ["composite_numba", "numba_available"]

logger = logging.getLogger(__name__)

@functools.cache
def numba_available() -> bool:
    """Whether numba imports (the compiled CPU compositing kernel is usable)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels():
    """The numba module and :mod:`forward3d.render._numba_kernels` (compiled or loaded from the cache on use)."""
    try:
        import numba
    except ImportError as e:
        raise ImportError("the numba CPU rasterizer kernel needs numba: pip install forward3d[fast]") from e
    from . import _numba_kernels as k

    assert k.FEAT == FEAT
    return numba, k


def _consts(dtype: torch.dtype) -> np.ndarray:
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    return np.array([0.5, 1.0, MAX_ALPHA, T_EPS, ALPHA_THRESHOLD, 0.0], dtype=np_dtype)


def _threads(numba) -> int:
    """Set numba's thread count to torch's intra-op count (at most NUMBA_NUM_THREADS) and return it."""
    n_torch = torch.get_num_threads()
    n = max(1, min(n_torch, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    # the first set_num_threads starts numba's OpenMP pool, which sets the thread count of the OpenMP
    # runtime torch shares (torch.get_num_threads() would read NUMBA_NUM_THREADS after): keep the caller's
    if torch.get_num_threads() != n_torch:
        torch.set_num_threads(n_torch)
    return n


_COMPILED: set[tuple[torch.dtype, str]] = set()
_LOCK = threading.Lock()  # first calls, and every call under numba's "workqueue" layer (not thread-safe)


def _timed_first_call(dtype: torch.dtype, what: str, fn, *args):
    """Return ``fn(*args)``; the first call per dtype and kernel compiles or loads from the cache: log its time."""
    import numba

    key = (dtype, what)
    if key in _COMPILED:
        if numba.threading_layer() == "workqueue":
            with _LOCK:
                return fn(*args)
        return fn(*args)
    with _LOCK:
        t0 = time.perf_counter()
        out = fn(*args)
        _COMPILED.add(key)
    logger.info("numba rasterizer %s kernel (%s): first call %.2f s (compilation or cache load included)", what,
                str(dtype).removeprefix("torch."), time.perf_counter() - t0)
    return out


class _CompositeNumba(torch.autograd.Function):
    """``(params [CN, 6], feats [CN, F]) -> (acc [C, H, W, F], T [C, H, W])``."""

    @staticmethod
    def forward(ctx, params: Tensor, feats: Tensor, extents: Tensor, isects, width: int, height: int,
                packed: Tensor | None = None):
        numba, k = _kernels()
        dtype = params.dtype
        C = isects.n_cams
        if packed is None:
            prm = torch.cat([params.detach(), extents.detach().to(dtype)], 1).contiguous()  # [CN, 8]
        else:  # already the [CN, 8] rows (params and extents are views of it)
            prm = packed.detach()
        F = feats.shape[1]
        f = torch.nn.functional.pad(feats.detach(), (0, FEAT - F)).contiguous()  # [CN, FEAT]
        xs = torch.arange(width, dtype=dtype) + 0.5
        ys = torch.arange(height, dtype=dtype) + 0.5
        acc = torch.zeros(C, height, width, FEAT, dtype=dtype)
        T = torch.ones(C, height, width, dtype=dtype)
        last = torch.zeros(C, height, width, dtype=torch.int32)
        args = (prm.numpy(), f.numpy(), isects.ids.numpy(), isects.start.numpy(), isects.count.numpy(),
                xs.numpy(), ys.numpy(), _consts(dtype), isects.tile_size, isects.tiles_x, isects.tiles_y,
                _threads(numba), acc.numpy(), T.numpy(), last.numpy())
        _timed_first_call(dtype, "forward", k.forward, *args)
        ctx.isects = isects
        ctx.n_feat = F
        ctx.save_for_backward(prm, f, xs, ys, T, last)
        ctx.mark_non_differentiable(last)
        return (acc if F == FEAT else acc[..., :F].contiguous()), T

    @staticmethod
    def backward(ctx, g_acc: Tensor, g_T: Tensor):
        numba, k = _kernels()
        prm, f, xs, ys, T, last = ctx.saved_tensors
        isects = ctx.isects
        dtype = prm.dtype
        F = ctx.n_feat
        g_acc = torch.nn.functional.pad(g_acc.to(dtype), (0, FEAT - F)).contiguous()  # [C, H, W, FEAT]
        g_T = g_T.to(dtype).contiguous()
        g_pair = torch.empty(isects.ids.numel(), 6 + FEAT, dtype=dtype)
        args = (prm.numpy(), f.numpy(), isects.ids.numpy(), isects.start.numpy(), isects.count.numpy(),
                xs.numpy(), ys.numpy(), _consts(dtype), isects.tile_size, isects.tiles_x, isects.tiles_y,
                _threads(numba), T.numpy(), last.numpy(), g_acc.numpy(), g_T.numpy(), g_pair.numpy())
        _timed_first_call(dtype, "backward", k.backward, *args)
        g = torch.zeros(prm.shape[0], 6 + FEAT, dtype=dtype)
        _timed_first_call(dtype, "reduction", k.reduce_pairs, isects.ids.numpy(), g_pair.numpy(), _threads(numba),
                          g.numpy())
        return g[:, :6], g[:, 6:6 + F], None, None, None, None, None


def composite_numba(
    params: Tensor,  # [C*N, 6]: mx, my, conic a, b, c, opacity
    feats: Tensor,  # [C*N, F]
    extents: Tensor,  # [C*N, 2]: the half widths of the boxes the tile intersection used (no gradient)
    isects,  # TileIsects
    width: int,
    height: int,
    packed: Tensor | None = None,  # [C*N, 8] contiguous: (params, extents) in one buffer, used without a copy
) -> tuple[Tensor, Tensor]:
    """Composite features ``[C, H, W, F]`` and final transmittance ``[C, H, W]`` with the compiled kernel
    (differentiable in ``params`` and ``feats``; CPU float32 or float64 tensors). ``packed`` (the compiled
    projection's buffer, :attr:`Projected.packed`) saves the copy into the kernel's row layout."""
    if params.device.type != "cpu" or params.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"composite_numba: expected CPU float32/float64 tensors, found {params.device} "
                         f"{params.dtype}")
    if not 1 <= feats.shape[1] <= FEAT:
        raise ValueError(f"composite_numba: expected 1 to {FEAT} feature channels, found {feats.shape[1]}")
    if not numba_available():
        raise ImportError("the numba CPU rasterizer kernel needs numba: pip install forward3d[fast]")
    if packed is not None and (packed.shape != (params.shape[0], 8) or not packed.is_contiguous()):
        raise ValueError(f"composite_numba: packed expected a contiguous [{params.shape[0]}, 8] tensor, found "
                         f"{list(packed.shape)}")
    acc, T = _CompositeNumba.apply(params, feats.to(params.dtype), extents, isects, width, height, packed)
    return acc, T
