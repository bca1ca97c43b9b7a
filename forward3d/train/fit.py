"""Photometric refinement of 3D Gaussians against posed images (L1 + SSIM, Adam).

A small, dependency-free version of the 3DGS optimisation loop without densification: it proves the
rasterizer's gradients end to end and polishes Gaussians from a feed-forward model or the unproject
baseline against a few posed views.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from forward3d.eval.image import psnr, ssim
from forward3d.types import Gaussians

logger = logging.getLogger(__name__)

__all__ = ["FitConfig", "FitResult", "fit_gaussians"]


@dataclass
class FitConfig:
    """Learning rates are 3DGS's with the colour rate raised 10x, since this loop runs hundreds,
    not tens of thousands, of steps."""

    steps: int = 300
    lambda_ssim: float = 0.2  # loss = (1 - l) * L1 + l * (1 - SSIM), as in 3DGS
    lr_means: float = 1.6e-4  # times the scene extent
    lr_quats: float = 1e-3
    lr_scales: float = 5e-3
    lr_opacity: float = 5e-2
    lr_sh: float = 2.5e-2
    lr_sh_rest_factor: float = 1 / 20
    views_per_step: int = 1
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0
    eval_every: int = 50
    progress: bool = True


@dataclass
class FitResult:
    gaussians: Gaussians
    losses: list[float] = field(default_factory=list)
    eval_psnr: list[tuple[int, float]] = field(default_factory=list)  # (step, mean held-out PSNR)


def _evaluate(g: Gaussians, images: Tensor, cameras, background: Tensor) -> float:
    from forward3d.render import Cameras, rasterize

    vals = []
    with torch.no_grad():
        for i in range(len(images)):
            cam = Cameras(cameras.w2c[i:i + 1], cameras.K[i:i + 1], cameras.width, cameras.height)
            vals.append(psnr(rasterize(g, cam, background=background).colors[0].clamp(0, 1), images[i]).item())
    return float(sum(vals) / len(vals))


def fit_gaussians(gaussians: Gaussians, images: Tensor, cameras, config: FitConfig | None = None,
                  eval_images: Tensor | None = None, eval_cameras=None) -> FitResult:
    """Optimise ``gaussians`` so that they render ``images`` ``[V, H, W, 3]`` (in [0, 1]) from
    ``cameras`` (:class:`forward3d.render.Cameras` with ``V`` cameras).

    ``eval_images``/``eval_cameras`` (held-out views) are scored every ``eval_every`` steps.
    """
    from tqdm import tqdm

    from forward3d.render import Cameras, rasterize

    cfg = config or FitConfig()
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(cameras):
        raise ValueError(f"fit_gaussians: images must be [V, H, W, 3] with one camera each, found "
                         f"{list(images.shape)} for {len(cameras)} cameras")
    gen = torch.Generator().manual_seed(cfg.seed)
    params = {name: getattr(gaussians, name).detach().clone().requires_grad_(True)
              for name in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    extent = float((gaussians.means.detach() - gaussians.means.detach().mean(0)).norm(dim=-1).median().clamp_min(1e-3))
    sh_dc = params["sh"]
    groups = [
        {"params": [params["means"]], "lr": cfg.lr_means * extent},
        {"params": [params["quats"]], "lr": cfg.lr_quats},
        {"params": [params["log_scales"]], "lr": cfg.lr_scales},
        {"params": [params["opacity_logits"]], "lr": cfg.lr_opacity},
        {"params": [sh_dc], "lr": cfg.lr_sh},
    ]
    opt = torch.optim.Adam(groups, eps=1e-15)
    # degree > 0 SH learn slower (3DGS): scale their gradient
    rest_scale = torch.ones_like(sh_dc)
    rest_scale[:, 1:] = cfg.lr_sh_rest_factor
    bg = torch.tensor(cfg.background, dtype=images.dtype, device=images.device)
    result = FitResult(gaussians)
    if eval_images is not None:
        result.eval_psnr.append((0, _evaluate(gaussians, eval_images, eval_cameras, bg)))
    bar = tqdm(range(cfg.steps), desc="fit", disable=not cfg.progress)
    for step in bar:
        idx = torch.randint(len(images), (cfg.views_per_step,), generator=gen)
        cams = Cameras(cameras.w2c[idx], cameras.K[idx], cameras.width, cameras.height)
        g = Gaussians(params["means"], params["quats"], params["log_scales"], params["opacity_logits"], sh_dc)
        pred = rasterize(g, cams, background=bg).colors
        target = images[idx]
        l1 = (pred - target).abs().mean()
        loss = (1 - cfg.lambda_ssim) * l1 + cfg.lambda_ssim * (1 - ssim(pred, target, padding="same").mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sh_dc.grad is not None:
            sh_dc.grad.mul_(rest_scale)
        opt.step()
        result.losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        if eval_images is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            gd = Gaussians(*(params[n].detach() for n in ("means", "quats", "log_scales", "opacity_logits")), sh_dc.detach())
            result.eval_psnr.append((step + 1, _evaluate(gd, eval_images, eval_cameras, bg)))
    result.gaussians = Gaussians(*(params[n].detach() for n in ("means", "quats", "log_scales", "opacity_logits")),
                                 sh_dc.detach())
    return result
