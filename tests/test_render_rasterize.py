"""Rasterizer: analytic cases, fast path vs the literal reference, gradients, API checks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _scenes import assert_outputs_close, gradcheck_render, make_cams, random_scene

from forward3d.render import Cameras, rasterize
from forward3d.render.common import prepare
from forward3d.render.tiled import render_tiled
from forward3d.types import SH_C0, Gaussians

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "garden" / "test_garden.npz"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# --------------------------------------------------------------------------------------------------
# analytic cases
# --------------------------------------------------------------------------------------------------


def _two_on_a_ray(dtype):
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=dtype)
    g = Gaussians.from_activated(means, torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=dtype),
                                 torch.full((2, 3), 0.05, dtype=dtype), torch.ones(2, dtype=dtype),
                                 colors=torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype))
    cams = make_cams(W=17, H=13, f=20.0, cx=8.5, cy=6.5, dtype=dtype)  # pixel (8, 6) centre on the axis
    return g, cams


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_two_opaque_gaussians_on_one_ray(backend):
    g, cams = _two_on_a_ray(torch.float32)
    out = rasterize(g, cams, backend=backend, background=torch.tensor([0.0, 0.0, 1.0]))
    c = out.colors[0, 6, 8]
    # front one: alpha = 0.99; back one: T (1 - 0.99) <= 1e-4 in float32, so it is dropped
    torch.testing.assert_close(c, torch.tensor([0.99, 0.0, 0.01]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.alphas[0, 6, 8], torch.tensor(0.99), atol=1e-6, rtol=0)


def test_alpha_contour_at_mahalanobis_cutoff():
    o = 0.6
    g = Gaussians.from_activated(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0, 0, 0]]),
                                 torch.full((1, 3), 0.3), torch.tensor([o]), colors=torch.ones(1, 3))
    cams = make_cams(W=40, H=40, f=30.0, cx=20.3, cy=19.8)
    out = rasterize(g, cams, backend="torch")
    var = (30.0 * 0.3 / 2.0) ** 2 + 0.3
    vary = (30.0 * 1.05 * 0.3 / 2.0) ** 2 + 0.3
    j, i = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(40) + 0.5, indexing="xy")
    d = torch.sqrt((j - 20.3) ** 2 / var + (i - 19.8) ** 2 / vary)
    cut = math.sqrt(2 * math.log(255 * o))
    a = out.alphas[0]
    assert (a[d < cut - 1e-3] > 0).all()
    assert (a[d > cut + 1e-3] == 0).all()
    assert (a[(d < cut) & (a > 0)] >= 1 / 255 - 1e-7).all()


def test_background_and_empty_scene():
    g = random_scene(5)
    g_far = Gaussians(g.means - torch.tensor([0, 0, 10.0]), g.quats, g.log_scales, g.opacity_logits, g.sh)
    cams = make_cams()
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = rasterize(g_far, cams, background=bg)  # everything behind the camera
    assert (out.alphas == 0).all()
    torch.testing.assert_close(out.colors, bg.expand(1, 12, 16, 3))
    assert out.meta.n_isects == 0
    out = rasterize(Gaussians.empty(), cams, background=bg)
    torch.testing.assert_close(out.colors, bg.expand(1, 12, 16, 3))


def test_sh_degree1_colour_in_render():
    # a big Gaussian straight ahead: the view direction is +z, so colour = 0.5 + C0 sh0 + C1 sh2
    sh = torch.zeros(1, 4, 3)
    sh[0, 0] = torch.tensor([0.5, 0.0, -0.5])
    sh[0, 2] = torch.tensor([0.4, 0.0, 0.0])
    sh[0, 3] = torch.tensor([0.0, 9.0, 0.0])  # x term: zero on the axis
    g = Gaussians(torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.0),
                  torch.tensor([10.0]), sh)
    cams = make_cams(W=9, H=9, f=10.0, cx=4.5, cy=4.5)
    out = rasterize(g, cams)
    expected = torch.tensor([0.5 + SH_C0 * 0.5 + 0.4886025119029199 * 0.4, 0.5, 0.5 - SH_C0 * 0.5])
    torch.testing.assert_close(out.colors[0, 4, 4] / out.alphas[0, 4, 4], expected, atol=1e-5, rtol=1e-5)
    out0 = rasterize(g, cams, sh_degree=0)
    torch.testing.assert_close(out0.colors[0, 4, 4] / out0.alphas[0, 4, 4],
                               (0.5 + SH_C0 * sh[0, 0]).clamp_min(0), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# fast path vs reference
# --------------------------------------------------------------------------------------------------

SCENES = {
    "small_deg0": dict(scene=dict(n=30), cams=dict(W=16, H=12)),
    "sh3_nonsquare_offcentre": dict(scene=dict(n=40, deg=3, seed=1), cams=dict(W=23, H=11, cx=9.0, cy=7.5)),
    "straddling_borders": dict(scene=dict(n=40, seed=2, spread=(2.0, 1.5, 0.5), log_scale=(-2.0, -0.5)),
                               cams=dict(W=20, H=18, cx=6.0, cy=12.0)),
    "dense_early_stop": dict(scene=dict(n=60, seed=3, spread=(0.3, 0.3, 0.5), log_scale=(-1.5, -0.8),
                                        opacity_std=0.5), cams=dict(W=16, H=16)),
    "two_cameras": dict(scene=dict(n=40, deg=1, seed=4), cams=dict(W=16, H=12, n=2, jitter=0.3)),
}


@pytest.mark.parametrize("name", list(SCENES))
def test_fast_matches_reference(name):
    cfg = SCENES[name]
    g = random_scene(**cfg["scene"])
    cams = make_cams(**cfg["cams"])
    bg = torch.tensor([0.3, 0.1, 0.7])
    ref = rasterize(g, cams, backend="reference", background=bg, render_mode="RGB+D")
    if name == "dense_early_stop":
        assert (ref.alphas > 0.999).float().mean() > 0.2  # the early stop is exercised
    for ts in (4, 16):
        out = rasterize(g, cams, backend="torch", background=bg, render_mode="RGB+D", tile_size=ts)
        assert_outputs_close(ref, out)
    # many depth steps and tiny batches exercise the carried transmittance
    prep = prepare(g, cams, cams.width, cams.height, bg, g.sh_degree, "RGB+D", 0.01, 1e10, False)
    out = render_tiled(prep, cams.width, cams.height, tile_size=8, chunk_size=64, k_step=2)
    assert_outputs_close(ref, out)
    assert torch.equal(out.meta.radii, ref.meta.radii)


@pytest.mark.parametrize("mode", ["RGB", "D", "ED", "RGB+ED"])
def test_render_modes_match_reference(mode):
    g = random_scene(30, seed=5)
    cams = make_cams()
    ref = rasterize(g, cams, backend="reference", render_mode=mode)
    out = rasterize(g, cams, backend="torch", render_mode=mode)
    assert_outputs_close(ref, out)
    if mode in ("D", "ED"):
        assert out.colors is None
    rgbd = rasterize(g, cams, render_mode="RGB+D")
    if mode == "ED":
        torch.testing.assert_close(out.depths, rgbd.depths / rgbd.alphas.clamp_min(1e-10))


def test_antialiased_matches_reference():
    g = random_scene(30, seed=6, log_scale=(-4.0, -2.0))
    cams = make_cams()
    ref = rasterize(g, cams, backend="reference", antialiased=True)
    out = rasterize(g, cams, backend="torch", antialiased=True)
    assert_outputs_close(ref, out)
    assert out.alphas.sum() < rasterize(g, cams).alphas.sum()


def test_camera_batch_equals_separate_calls():
    g = random_scene(40, deg=2, seed=7)
    cams = make_cams(n=3, jitter=0.4)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    both = rasterize(g, cams, background=bg, render_mode="RGB+ED")
    for i in range(3):
        one = rasterize(g, cams[i], background=bg[i], render_mode="RGB+ED")
        torch.testing.assert_close(both.colors[i], one.colors[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(both.alphas[i], one.alphas[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(both.depths[i], one.depths[0], atol=1e-5, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------


def _params(g, w2c):
    return [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh, w2c]


@pytest.mark.parametrize("keep_pairs", [True, False])
def test_gradients_fast_match_reference(keep_pairs, monkeypatch):
    from forward3d.render import tiled

    if not keep_pairs:  # the backward recomputes alpha and T instead of reading them back
        monkeypatch.setattr(tiled, "SAVE_PAIRS_BUDGET", 0)
    g = random_scene(40, deg=2, seed=8, dtype=torch.float64, opacity_std=3.0)
    cams = make_cams(W=18, H=14, n=2, jitter=0.2, dtype=torch.float64, cx=8.0)
    gen = torch.Generator().manual_seed(0)
    wc = torch.randn(2, 14, 18, 3, generator=gen, dtype=torch.float64)
    wa = torch.randn(2, 14, 18, generator=gen, dtype=torch.float64)
    wd = torch.randn(2, 14, 18, generator=gen, dtype=torch.float64)
    grads = {}
    for backend in ("reference", "torch"):
        w2c = cams.w2c.clone().requires_grad_(True)
        params = _params(g, w2c)
        for p in params[:-1]:
            p.requires_grad_(True)
            p.grad = None
        out = rasterize(g, Cameras(w2c, cams.K, cams.width, cams.height), backend=backend, tile_size=8,
                        render_mode="RGB+ED", background=torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64),
                        **({"cpu_kernel": "torch"} if backend == "torch" else {}))  # keep_pairs: the torch kernel
        loss = (out.colors * wc).sum() + (out.alphas * wa).sum() + (out.depths * wd).sum()
        grads[backend] = torch.autograd.grad(loss, params)
    for a, b in zip(grads["reference"], grads["torch"]):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, atol=1e-9 * a.abs().max().item(), rtol=1e-7)


@pytest.mark.parametrize("keep_pairs", [True, False])
def test_worker_threads_match_one_worker_and_reference(keep_pairs, monkeypatch):
    """Tiles dealt to several compositing threads: same image and gradients as one thread and as the
    reference (values to float64 rounding; only the order of the per-thread gradient sums differs)."""
    from forward3d.render import tiled

    if not keep_pairs:
        monkeypatch.setattr(tiled, "SAVE_PAIRS_BUDGET", 0)
    g = random_scene(60, deg=1, seed=3, dtype=torch.float64, opacity_std=3.0)
    cams = make_cams(W=21, H=15, n=2, jitter=0.2, dtype=torch.float64)
    wc = torch.randn(2, 15, 21, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs, grads = {}, {}
    for workers in (1, 3, "reference"):
        params = [p.clone().requires_grad_(True) for p in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)]
        gg = Gaussians(*params)
        if workers == "reference":
            out = rasterize(gg, cams, backend="reference", render_mode="RGB+D")
        else:
            prep = prepare(gg, cams, cams.width, cams.height, None, 1, "RGB+D", 0.01, 1e10, False)
            out = render_tiled(prep, cams.width, cams.height, tile_size=4, chunk_size=256, k_step=4,
                               workers=workers, cpu_kernel="torch")
        loss = (out.colors * wc).sum() + out.alphas.sum() + out.depths.sum()
        outs[workers], grads[workers] = out, torch.autograd.grad(loss, params)
    assert_outputs_close(outs[1], outs[3], atol=1e-12, rtol=1e-12)
    assert_outputs_close(outs["reference"], outs[3], atol=1e-9, rtol=1e-9)
    for a, b, r in zip(grads[1], grads[3], grads["reference"]):
        assert r.abs().max() > 0
        torch.testing.assert_close(b, a, atol=1e-12 * a.abs().max().item(), rtol=1e-10)
        torch.testing.assert_close(b, r, atol=1e-9 * r.abs().max().item(), rtol=1e-7)
    with pytest.raises(ValueError, match="workers"):
        render_tiled(prep, cams.width, cams.height, workers=0, cpu_kernel="torch")


def test_gradcheck_float64():
    assert gradcheck_render("torch", "RGB+D")


def test_gradcheck_float64_full_mode_means_opacities():
    g = random_scene(3, seed=11, dtype=torch.float64, spread=(0.2, 0.2, 0.2), log_scale=(-1.5, -1.2),
                     opacity_std=1.0)
    cams = make_cams(W=6, H=5, f=7.0, dtype=torch.float64)

    def fn(means, opacity_logits):
        gg = Gaussians(means, g.quats, g.log_scales, opacity_logits, g.sh)
        out = rasterize(gg, cams, backend="torch", tile_size=4, render_mode="RGB+ED")
        return out.colors, out.alphas, out.depths

    inputs = [g.means.clone().requires_grad_(True), g.opacity_logits.clone().requires_grad_(True)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_kernels_match_eager():
    g = random_scene(40, deg=2, seed=12, opacity_std=3.0)
    cams = make_cams(W=18, H=14, n=2, jitter=0.2, cx=8.0)
    params = [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh]
    for p in params:
        p.requires_grad_(True)
    results = []
    for compile in (False, True):
        out = rasterize(g, cams, render_mode="RGB+ED", compile=compile, background=torch.tensor([0.2, 0.3, 0.4]),
                        cpu_kernel="torch")
        loss = out.colors.sum() + 0.3 * out.alphas.sum() + 0.1 * out.depths.sum()
        results.append((out, torch.autograd.grad(loss, params)))
    assert_outputs_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, atol=1e-5 * a.abs().max().item(), rtol=1e-4)


def test_means2d_gradient_is_readable():
    g = random_scene(20, seed=10)
    g.means.requires_grad_(True)
    out = rasterize(g, make_cams())
    out.meta.means2d.retain_grad()
    out.colors.sum().backward()
    assert out.meta.means2d.grad is not None and out.meta.means2d.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# API checks
# --------------------------------------------------------------------------------------------------


def test_shapes_meta_and_bad_input():
    g = random_scene(10, deg=1)
    cams = make_cams(W=15, H=9, n=2, jitter=0.1)
    out = rasterize(g, cams, render_mode="RGB+D")
    assert out.colors.shape == (2, 9, 15, 3) and out.alphas.shape == (2, 9, 15) and out.depths.shape == (2, 9, 15)
    assert out.meta.radii.shape == (2, 10) and out.meta.radii.dtype == torch.int32
    assert out.meta.means2d.shape == (2, 10, 2) and out.meta.backend == "torch"
    assert rasterize(g, cams, width=8, height=5).colors.shape == (2, 5, 8, 3)
    with pytest.raises(ValueError, match="render_mode"):
        rasterize(g, cams, render_mode="RGBD")
    with pytest.raises(ValueError, match="backend"):
        rasterize(g, cams, backend="cuda")
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(g, cams, sh_degree=2)
    with pytest.raises(ValueError, match="background"):
        rasterize(g, cams, background=torch.zeros(4))
    with pytest.raises(TypeError):
        rasterize(g.means, cams)
    with pytest.raises(ImportError, match="pip install gsplat"):
        import importlib.util

        if importlib.util.find_spec("gsplat") is not None:
            pytest.skip("gsplat installed")
        rasterize(g, cams, backend="gsplat")


# --------------------------------------------------------------------------------------------------
# real data: a crop of the garden scene
# --------------------------------------------------------------------------------------------------


def _garden(n_max=None):
    if not DATA.exists():
        pytest.fail(f"{DATA} not found: the tests need ../shared beside the checkout")
    d = np.load(DATA)
    means = torch.from_numpy(d["means3d"])
    colors = torch.from_numpy(d["colors"]).float() / 255
    keep = ((means > -2) & (means < 2)).all(-1)
    means, colors = means[keep], colors[keep]
    n = len(means)
    gen = torch.Generator().manual_seed(42)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    scales = torch.rand(n, 3, generator=gen) * (0.02 - 1e-4) + 1e-4
    opac = torch.rand(n, generator=gen)
    g = Gaussians.from_activated(means, quats, scales, opac, colors=colors)
    W, H = int(d["width"]), int(d["height"])
    cams = Cameras(torch.from_numpy(d["viewmats"][:1]), torch.from_numpy(d["Ks"][:1]), W, H).resized(W // 4, H // 4)
    return g, cams


def test_garden_crop_fast_matches_reference():
    g, cams = _garden()
    # a 10 x 8 window of the 1/4-resolution view of camera 0: shift the principal point
    x0, y0, w, h = 70, 40, 10, 8
    K = cams.K.clone()
    K[:, 0, 2] -= x0
    K[:, 1, 2] -= y0
    crop = Cameras(cams.w2c, K, w, h)
    full = rasterize(g, crop, backend="torch")
    sel = full.meta.radii[0] > 0
    assert 100 < int(sel.sum()) < 6000, int(sel.sum())
    sub = g.subset(sel)
    ref = rasterize(sub, crop, backend="reference")
    out = rasterize(sub, crop, backend="torch")
    assert_outputs_close(ref, out, atol=5e-5)
    assert_outputs_close(out, full, atol=1e-6)
    assert (ref.alphas > 0.5).float().mean() > 0.5


# --------------------------------------------------------------------------------------------------
# every device present x float32/float64 (conftest: ``device``, ``float_dtype``)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sh3_nonsquare_offcentre", "two_cameras"])
def test_fast_matches_reference_per_device_and_dtype(name, device, float_dtype):
    cfg = SCENES[name]
    g = random_scene(**cfg["scene"], dtype=float_dtype).to(device)
    cams = make_cams(**cfg["cams"], dtype=float_dtype).to(device)
    bg = torch.tensor([0.3, 0.1, 0.7], dtype=float_dtype, device=device)
    ref = rasterize(g, cams, backend="reference", background=bg, render_mode="RGB+D")
    out = rasterize(g, cams, backend="torch", background=bg, render_mode="RGB+D")
    assert out.colors.device.type == torch.device(device).type and out.colors.dtype == float_dtype
    assert_outputs_close(ref, out)


def test_gradients_per_device(device):
    g = random_scene(12, deg=1, seed=5).to(device)
    cams = make_cams(W=12, H=10).to(device)
    params = [p.clone().requires_grad_(True) for p in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)]
    grads = []
    for backend in ("reference", "torch"):
        out = rasterize(Gaussians(*params), cams, backend=backend, render_mode="RGB+D")
        loss = out.colors.square().sum() + out.depths.sum()
        grads.append(torch.autograd.grad(loss, params))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
