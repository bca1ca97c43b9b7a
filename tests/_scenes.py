"""Random Gaussian scenes and cameras for the rasterizer tests (``test_render_rasterize``,
``test_render_numba``): seeded, small, every shape a parameter; and the output comparison they share."""

import torch

from forward3d.render import Cameras
from forward3d.types import Gaussians


def random_scene(n=40, deg=0, dtype=torch.float32, seed=0, spread=(0.8, 0.6, 0.4), log_scale=(-2.5, -1.0),
                 opacity_std=2.0, depth=3.0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    means = (torch.randn(n, 3, generator=gen, dtype=dtype) * torch.tensor(spread, dtype=dtype)
             + torch.tensor([0, 0, depth], dtype=dtype))
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    log_scales = r(n, 3) * (log_scale[1] - log_scale[0]) + log_scale[0]
    opacity_logits = torch.randn(n, generator=gen, dtype=dtype) * opacity_std
    sh = torch.randn(n, (deg + 1) ** 2, 3, generator=gen, dtype=dtype) * 0.6
    return Gaussians(means, quats, log_scales, opacity_logits, sh)


def make_cams(W=16, H=12, f=None, cx=None, cy=None, n=1, dtype=torch.float32, jitter=0.0, seed=0):
    f = f if f is not None else 1.2 * W
    K = torch.tensor([[f, 0, W / 2 if cx is None else cx], [0, f * 1.05, H / 2 if cy is None else cy], [0, 0, 1]],
                     dtype=dtype)
    w2c = torch.eye(4, dtype=dtype)[None].repeat(n, 1, 1)
    if jitter:
        gen = torch.Generator().manual_seed(seed)
        w2c[:, :3, 3] = torch.randn(n, 3, generator=gen, dtype=dtype) * jitter
        w2c[0, :3, 3] = 0
    return Cameras(w2c, K[None].repeat(n, 1, 1), W, H)


def assert_outputs_close(a, b, atol=2e-5, rtol=1e-4):
    for name in ("colors", "alphas", "depths"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
            continue
        torch.testing.assert_close(y, x, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def gradcheck_render(cpu_kernel: str, render_mode: str) -> bool:
    """float64 ``gradcheck`` of ``rasterize(..., cpu_kernel=...)`` on a 5-Gaussian scene in a 7x6 image, through
    the Gaussians' parameters and the camera's ``w2c`` (colours, alphas and depths)."""
    from forward3d.render import rasterize

    g = random_scene(5, deg=1, seed=9, dtype=torch.float64, spread=(0.3, 0.3, 0.2), log_scale=(-1.6, -1.2),
                     opacity_std=1.0)
    cams = make_cams(W=7, H=6, f=8.0, dtype=torch.float64)
    background = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)

    def fn(means, quats, log_scales, opacity_logits, sh, w2c):
        out = rasterize(Gaussians(means, quats, log_scales, opacity_logits, sh), Cameras(w2c, cams.K, 7, 6),
                        backend="torch", cpu_kernel=cpu_kernel, tile_size=4, render_mode=render_mode,
                        background=background)
        return out.colors, out.alphas, out.depths

    inputs = [p.clone().requires_grad_(True) for p in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh,
                                                       cams.w2c)]
    return torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
