"""The public entry point :func:`rasterize` and backend dispatch."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

from ..types import Gaussians
from .cameras import Cameras
from .common import RenderMode, RenderOutput, check_inputs, prepare
from .tiled import CpuKernel

__all__ = ["rasterize", "Backend", "DEFAULT_CHUNK_SIZE"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "reference", "gsplat"]
BACKENDS = ("auto", "torch", "reference", "gsplat")
DEFAULT_CHUNK_SIZE = 1 << 18  # pixel-Gaussian pairs per vectorised step of the torch path
TORCH_TILE_SIZE = 4  # the torch kernel's default tile size (the image does not depend on it; speed does)
NUMBA_TILE_SIZE = 16  # the numba kernel's (it visits only the pixels of each Gaussian's box: fewer, larger tiles)
GSPLAT_TILE_SIZE = 16


def _resolve_backend(backend: str, gaussians: Gaussians) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: backend expected one of {BACKENDS}, found {backend!r}")
    if backend != "auto":
        return backend
    if gaussians.means.is_cuda:
        from .gsplat_backend import gsplat_available

        if gsplat_available():
            return "gsplat"
        logger.info("rasterize: CUDA tensors but gsplat is not installed; using the torch path")
    return "torch"


def _needs_camera_grad(cameras: Cameras) -> bool:
    """Whether a gradient must flow to the cameras (the compiled projection's backward has none)."""
    return torch.is_grad_enabled() and (cameras.w2c.requires_grad or cameras.K.requires_grad)


def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int | None = None,
    height: int | None = None,
    background: Tensor | None = None,
    sh_degree: int | None = None,
    render_mode: RenderMode = "RGB",
    near: float = 0.01,
    far: float = 1e10,
    antialiased: bool = False,
    backend: Backend = "auto",
    tile_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compile: bool = False,
    cpu_kernel: CpuKernel = "auto",
) -> RenderOutput:
    """Render 3D Gaussians into ``C`` cameras (gsplat semantics; differentiable).

    Args:
        gaussians: N Gaussians (raw parameters); gradients flow to all of their tensors.
        cameras: ``C`` cameras; gradients flow to ``cameras.w2c`` when it requires grad.
        width, height: image size; default ``cameras.width`` / ``cameras.height`` (``K`` is used as is).
        background: ``[3]`` or ``[C, 3]`` colour added as ``T * background``; default black.
        sh_degree: SH degree to evaluate (``<=`` the Gaussians' degree); default the Gaussians' degree.
        render_mode: ``"RGB"``, ``"D"`` (accumulated depth ``sum T alpha z``), ``"ED"`` (that over alpha),
            ``"RGB+D"`` or ``"RGB+ED"``.
        near, far: Gaussians with camera z outside ``(near, far)`` are culled.
        antialiased: gsplat's ``rasterize_mode="antialiased"`` (opacity times
            ``sqrt(det(cov2d) / det(cov2d + 0.3 I))``).
        backend: ``"torch"`` (tiled, vectorised, CPU or GPU), ``"reference"`` (slow, literal, tiny scenes
            only), ``"gsplat"`` (CUDA, needs ``pip install gsplat``), ``"auto"`` (gsplat for CUDA tensors
            when installed, else torch).
        tile_size: tile size in pixels; default 4 for the torch kernel (fewer wasted pixel-Gaussian pairs on
            CPU; the image does not depend on it), NUMBA_TILE_SIZE for the numba kernel and 16 for gsplat.
        chunk_size: pixel-Gaussian pairs evaluated per vectorised step of the torch path (memory knob:
            roughly 40 bytes each).
        compile: torch path only: run the per-batch pair kernels through ``torch.compile`` (about 2x faster
            compositing on CPU; 10-60 s of compilation once per process, so for optimisation loops).
        cpu_kernel: torch path only: the compositing kernel. ``"auto"`` (default): the compiled numba kernel
            for CPU float32/float64 tensors when numba is installed (``pip install forward3d[fast]``;
            1.6-1.8x (1/2 res) to 2.65x (1M Gaussians, 1024^2) less CPU time per forward+backward; compiled on
            the first call, ~18 s of CPU, then loaded from numba's on-disk cache) and ``compile`` is off,
            else the vectorised torch kernel; ``"numba"`` or ``"torch"`` force one.

    Returns:
        :class:`RenderOutput` with ``colors`` ``[C, H, W, 3]``, ``alphas`` ``[C, H, W]``, ``depths``
        ``[C, H, W]`` (depth modes) and ``meta`` (radii, means2d, ...).
    """
    deg = check_inputs(gaussians, cameras, render_mode, sh_degree)
    width = cameras.width if width is None else int(width)
    height = cameras.height if height is None else int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"rasterize: expected a positive image size, found {width}x{height}")
    which = _resolve_backend(backend, gaussians)
    kernel = "torch"
    if which == "torch":
        from .tiled import resolve_cpu_kernel

        kernel = resolve_cpu_kernel(cpu_kernel, gaussians.means, compile)
    if tile_size is None:
        tile_size = (GSPLAT_TILE_SIZE if which == "gsplat" else NUMBA_TILE_SIZE if kernel == "numba"
                     else TORCH_TILE_SIZE)
    if tile_size <= 0 or chunk_size <= 0:
        raise ValueError(f"rasterize: tile_size and chunk_size must be positive, found {tile_size}, {chunk_size}")
    if which == "gsplat":
        from .gsplat_backend import render_gsplat

        return render_gsplat(gaussians, cameras, width, height, background, deg, render_mode, near, far,
                             antialiased, tile_size)
    if which == "reference":
        from .reference import project_reference, render_reference

        prep = prepare(gaussians, cameras, width, height, background, deg, render_mode, near, far, antialiased,
                       projector=project_reference)
        return render_reference(prep, width, height, near, far)
    projector = None
    if kernel == "numba" and not _needs_camera_grad(cameras):
        from .numba_prepare import numba_projector

        # compiled projection (and its backward to the Gaussians): one parallel loop instead of ~40 small
        # torch ops and their autograd; camera gradients need the torch projection
        projector = numba_projector
    prep = prepare(gaussians, cameras, width, height, background, deg, render_mode, near, far, antialiased,
                   projector=projector)
    from .tiled import render_tiled

    return render_tiled(prep, width, height, tile_size=tile_size, chunk_size=chunk_size, compiled=compile,
                        cpu_kernel=kernel)
