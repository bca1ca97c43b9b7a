"""The compiled numba projection and tile intersection vs their torch references (values, culling, lists),
and the dispatch of :func:`rasterize` to them (no-gradient renders only)."""

from pathlib import Path

import pytest
import torch
from _scenes import assert_outputs_close, make_cams, random_scene

from forward3d.render import rasterize
from forward3d.render.projection import project_gaussians
from forward3d.render.tiled import intersect_tiles
from forward3d.types import Gaussians

pytest.importorskip("numba", reason="numba not installed (pip install forward3d[fast])")

from forward3d.render.numba_prepare import intersect_tiles_numba, project_gaussians_numba  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _edge_scene(dtype):
    """Random Gaussians plus the culling cases: behind the camera, beyond ``far``, opacity below 1/255,
    off screen, on the near plane, and a degenerate (flat) one."""
    g = random_scene(300, seed=7, spread=(2.5, 2.0, 1.5), opacity_std=4.0, dtype=dtype)
    means = g.means.clone()
    means[:10, 2] = -1.0  # behind
    means[10:15, 2] = 5e10  # beyond far
    means[15:20, 0] = 40.0  # far off screen to the right
    means[20:25, 2] = 0.01  # on the near plane
    logits = g.opacity_logits.clone()
    logits[25:35] = -8.0  # opacity < 1/255
    log_scales = g.log_scales.clone()
    log_scales[35:40, 2] = -30.0  # flat
    means[60:80] = means[80:100]  # equal depths: the depth order breaks ties by index
    return Gaussians(means, g.quats, log_scales, logits, g.sh)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("antialiased", [False, True])
def test_projection_matches_torch(dtype, antialiased):
    g = _edge_scene(dtype)
    cams = make_cams(W=41, H=29, n=3, jitter=0.4, cx=15.0, dtype=dtype)
    args = (g.means, g.quats, g.scales, g.opacities, cams.w2c, cams.K, cams.width, cams.height)
    ref = project_gaussians(*args, near=0.05, far=1e10, antialiased=antialiased)
    out = project_gaussians_numba(*args, near=0.05, far=1e10, antialiased=antialiased)
    assert torch.equal(out.radii, ref.radii)
    assert 0 < int((ref.radii > 0).sum()) < ref.radii.numel()  # some culled, some not
    vis = ref.radii > 0
    tol = dict(atol=0, rtol=1e-6) if dtype == torch.float32 else dict(atol=0, rtol=1e-13)
    for name in ("means2d", "depths", "conics", "covars2d", "opacities", "extents"):
        a, b = getattr(ref, name), getattr(out, name)
        assert b.dtype == dtype and b.shape == a.shape, name
        torch.testing.assert_close(b[vis], a[vis], **tol, msg=lambda m: f"{name}: {m}")
    assert (out.extents[~vis] == 0).all()


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_intersection_lists_identical(tile_size):
    g = _edge_scene(torch.float32)
    cams = make_cams(W=53, H=37, n=2, jitter=0.3, cx=20.0)
    p = project_gaussians(g.means, g.quats, g.scales, g.opacities, cams.w2c, cams.K, cams.width, cams.height)
    vis = p.radii > 0
    ref = intersect_tiles(p.means2d, p.extents, p.depths, vis, cams.width, cams.height, tile_size)
    out = intersect_tiles_numba(p.means2d, p.extents, p.depths, vis, cams.width, cams.height, tile_size)
    assert ref.ids.numel() > 100
    from forward3d.render import _numba_prepare as k
    from forward3d.render.tiled import depth_order

    order = k.depth_order(p.depths.reshape(-1).view(torch.int32).numpy(), vis.reshape(-1).int().numpy(), len(g))
    assert torch.equal(torch.from_numpy(order), depth_order(p.depths, vis))
    # the parallel counting sort gives the same lists for any split of the order into thread parts
    box = torch.empty(2 * len(g), 4, dtype=torch.int32).numpy()
    k.tile_boxes(p.means2d.reshape(-1, 2).contiguous().numpy(), p.extents.reshape(-1, 2).contiguous().numpy(),
                 vis.reshape(-1).int().numpy(), cams.width, cams.height, tile_size, 1e-3, box)
    for parts in (1, 2, 3, 7):
        ids, start, count = k.tile_lists(order, box, len(g), 2, ref.tiles_x, ref.tiles_y, parts)
        assert torch.equal(torch.from_numpy(ids), ref.ids) and torch.equal(torch.from_numpy(start), ref.start)
        assert torch.equal(torch.from_numpy(count), ref.count)
    for name in ("ids", "start", "count"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    assert (out.tiles_x, out.tiles_y, out.n_cams, out.tile_size) == (ref.tiles_x, ref.tiles_y, 2, tile_size)
    # nothing visible: empty lists of the right size
    none = intersect_tiles_numba(p.means2d, p.extents, p.depths, torch.zeros_like(vis), cams.width, cams.height, 8)
    assert none.ids.numel() == 0 and none.count.shape == (2 * 7 * 5,) and int(none.count.sum()) == 0


def test_rasterize_uses_compiled_projection_unless_cameras_need_grad(monkeypatch):
    from forward3d.render import numba_prepare

    calls = []
    real = numba_prepare.numba_projector
    monkeypatch.setattr(numba_prepare, "numba_projector", lambda *a: calls.append(1) or real(*a))
    g = random_scene(120, deg=1, seed=3, opacity_std=3.0)
    cams = make_cams(W=30, H=22, n=2, jitter=0.2)
    bg = torch.tensor([0.1, 0.2, 0.3])
    with torch.no_grad():
        fast = rasterize(g, cams, render_mode="RGB+ED", background=bg)
    assert calls == [1] and fast.meta.kernel == "numba"
    ref = rasterize(g, cams, render_mode="RGB+ED", background=bg, cpu_kernel="torch")  # torch projection too
    assert_outputs_close(ref, fast, atol=2e-6, rtol=1e-5)
    assert torch.equal(fast.meta.radii, ref.meta.radii)
    # a geometry gradient: the compiled projection with its backward; meta.means2d is in the graph
    means = g.means.clone().requires_grad_(True)
    out = rasterize(Gaussians(means, g.quats, g.log_scales, g.opacity_logits, g.sh), cams)
    assert calls == [1, 1] and out.meta.kernel == "numba"
    out.meta.means2d.retain_grad()
    out.colors.sum().backward()
    assert means.grad.abs().max() > 0 and out.meta.means2d.grad.abs().max() > 0
    # a camera gradient: the torch projection (the compiled backward has no camera gradient)
    w2c = cams.w2c.clone().requires_grad_(True)
    out = rasterize(g, type(cams)(w2c, cams.K, cams.width, cams.height))
    assert calls == [1, 1]
    out.colors.sum().backward()
    assert w2c.grad.abs().max() > 0


def test_first_numba_call_keeps_torch_thread_count(tmp_path):
    """numba's OpenMP pool, started by the first compiled call, used to reset torch's intra-op thread count
    to NUMBA_NUM_THREADS (so a process that had set 1 thread ran torch with 2 after its first render)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from _scenes import make_cams, random_scene\n"
        "from forward3d.render import rasterize\n"
        "torch.set_num_threads(1)\n"
        "with torch.no_grad():\n"
        "    out = rasterize(random_scene(30, seed=1), make_cams(W=12, H=10))\n"
        "assert out.meta.kernel == 'numba', out.meta.kernel\n"
        "print(torch.get_num_threads())\n"
    )
    env = {**__import__("os").environ, "NUMBA_NUM_THREADS": "2",
           "PYTHONPATH": f"{Path(__file__).parent}{__import__('os').pathsep}{Path(__file__).parents[1]}"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "1"


@pytest.mark.parametrize("antialiased", [False, True])
def test_compiled_projection_gradients_match_torch_autograd(antialiased):
    from forward3d.render.numba_prepare import project_gaussians_numba_autograd

    dt = torch.float64
    g = _edge_scene(dt)
    cams = make_cams(W=41, H=29, n=3, jitter=0.4, cx=15.0, dtype=dt)
    grads = []
    for fn in (project_gaussians, project_gaussians_numba_autograd):
        ps = [t.clone().requires_grad_(True) for t in (g.means, g.quats, g.log_scales, g.opacity_logits)]
        p = fn(ps[0], ps[1], ps[2].exp(), torch.sigmoid(ps[3]), cams.w2c, cams.K, cams.width, cams.height,
               near=0.05, antialiased=antialiased)
        gen = torch.Generator().manual_seed(1)
        loss = sum((getattr(p, f) * torch.randn(getattr(p, f).shape, generator=gen, dtype=dt)).sum()
                   for f in ("means2d", "depths", "conics", "opacities"))
        grads.append(torch.autograd.grad(loss, ps))
    for name, a, b in zip(("means", "quats", "log_scales", "opacity_logits"), *grads):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(b, a, atol=1e-12 * float(a.abs().max()), rtol=1e-9, msg=lambda m: f"{name}: {m}")


def test_compiled_projection_gradcheck():
    from forward3d.render.numba_prepare import project_gaussians_numba_autograd

    dt = torch.float64
    g = random_scene(6, seed=11, dtype=dt)
    cams = make_cams(W=20, H=16, n=2, jitter=0.3, dtype=dt)
    params = [t.clone().requires_grad_(True) for t in (g.means, g.quats, g.log_scales.exp(), g.opacities)]

    def f(means, quats, scales, opac):
        p = project_gaussians_numba_autograd(means, quats, scales, opac, cams.w2c, cams.K, 20, 16, antialiased=True)
        return p.means2d, p.depths, p.conics, p.opacities

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_rasterize_gradients_with_compiled_projection_match_torch(monkeypatch):
    """Gaussian gradients through rasterize: the compiled projection's backward (and kernel) equal the torch
    projection and kernel's."""
    from forward3d.render import numba_prepare

    g = random_scene(150, deg=1, seed=4, opacity_std=3.0, dtype=torch.float64)
    cams = make_cams(W=28, H=20, n=2, jitter=0.2, dtype=torch.float64)

    def grads(kernel):
        ps = [t.clone().requires_grad_(True) for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)]
        out = rasterize(Gaussians(*ps), cams, render_mode="RGB+D", cpu_kernel=kernel)
        (out.colors.square().sum() + out.depths.sum()).backward()
        return out, [p.grad for p in ps]

    calls = []
    real = numba_prepare.project_gaussians_numba_autograd
    monkeypatch.setattr(numba_prepare, "project_gaussians_numba_autograd", lambda *a, **k: calls.append(1) or real(*a, **k))
    out, fast = grads("numba")
    assert calls == [1]
    _, ref = grads("torch")  # torch kernel, torch projection
    for a, b in zip(ref, fast):
        torch.testing.assert_close(b, a, atol=1e-9 * float(a.abs().max()), rtol=1e-7)
