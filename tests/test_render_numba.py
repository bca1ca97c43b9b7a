"""The compiled numba CPU compositing kernel vs the torch kernel vs the literal reference (values, gradients,
edge cases, thread counts, dispatch)."""

import pytest
import torch
from _scenes import assert_outputs_close, gradcheck_render, make_cams, random_scene

from forward3d.render import rasterize, tiled_numba
from forward3d.types import Gaussians

pytest.importorskip("numba", reason="numba not installed (pip install forward3d[fast]): the compiled CPU kernel "
                                    "is optional; CI installs it with the dev extra")

pytestmark = pytest.mark.usefixtures("one_thread")

BG = (0.2, 0.3, 0.4)

# name -> (scene kwargs, camera kwargs, tile size)
SCENES = {
    "random": (dict(n=50, deg=1, seed=1, opacity_std=3.0), dict(W=23, H=17, n=2, jitter=0.2, cx=10.0), 8),
    # many Gaussians off screen or straddling the border (the image is a window of the scene)
    "offscreen": (dict(n=60, seed=2, spread=(2.5, 2.0, 0.4)), dict(W=19, H=15, cx=3.0, cy=12.0), 16),
    # opaque, large, many layers: every pixel saturates (early stop), alphas clamped at MAX_ALPHA
    "saturating": (dict(n=80, seed=3, spread=(0.3, 0.3, 0.5), log_scale=(-1.6, -0.9), opacity_std=0.1),
                   dict(W=20, H=14), 8),
    # a few small Gaussians in a large image: most tiles empty
    "sparse": (dict(n=4, seed=4, spread=(0.3, 0.2, 0.1), log_scale=(-3.0, -2.5)), dict(W=70, H=50), 16),
}


def _render(g, cams, kernel, mode="RGB+D", tile_size=8, bg=BG):
    backend = "reference" if kernel == "reference" else "torch"
    kw = {} if kernel == "reference" else dict(cpu_kernel=kernel, tile_size=tile_size)
    bg = None if bg is None else torch.tensor(bg, dtype=g.means.dtype)
    return rasterize(g, cams, backend=backend, render_mode=mode, background=bg, **kw)


def _loss_grads(g, cams, kernel, mode="RGB+D", tile_size=8, seed=0):
    params = [p.clone().requires_grad_(True) for p in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)]
    out = _render(Gaussians(*params), cams, kernel, mode, tile_size)
    gen = torch.Generator().manual_seed(seed)
    w = lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)
    loss = (out.colors * w(out.colors)).sum() + (out.alphas * w(out.alphas)).sum() + (out.depths * w(out.depths)).sum()
    return out, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name", list(SCENES))
def test_numba_matches_reference_and_torch_kernel(name):
    scene, cam, ts = SCENES[name]
    g = random_scene(**scene, dtype=torch.float64)
    if name == "saturating":  # opacity 0.9975: alpha clamped to MAX_ALPHA near the centres
        g = Gaussians(g.means, g.quats, g.log_scales, torch.full_like(g.opacity_logits, 6.0), g.sh)
    cams = make_cams(**cam, dtype=torch.float64)
    res = {k: _loss_grads(g, cams, k, tile_size=ts) for k in ("numba", "torch", "reference")}
    out = res["numba"][0]
    out.alphas.detach_()
    assert out.meta.kernel == "numba" and res["torch"][0].meta.kernel == "torch"
    for other in ("reference", "torch"):
        assert_outputs_close(res[other][0], out, atol=1e-10, rtol=1e-10)
        for a, b in zip(res[other][1], res["numba"][1]):
            torch.testing.assert_close(b, a, atol=1e-9 * max(a.abs().max().item(), 1e-12), rtol=1e-7)
    grads = res["reference"][1]
    assert all(gr.abs().max() > 0 for gr in grads)  # every parameter got a gradient
    if name == "saturating":  # the edge cases were reached: early stops and the MAX_ALPHA clamp
        assert int((out.alphas > 1 - 1e-3).sum()) > 100  # T fell to T_EPS: composited until the early stop
    if name == "sparse":
        assert float((out.alphas == 0).float().mean()) > 0.7  # most pixels (tiles) untouched: background only
        torch.testing.assert_close(out.colors[out.alphas == 0], torch.tensor(BG, dtype=torch.float64).expand(
            int((out.alphas == 0).sum()), 3))


@pytest.mark.parametrize("mode", ["RGB", "D", "ED", "RGB+ED"])
def test_numba_render_modes_float32(mode):
    g = random_scene(40, deg=2, seed=5, opacity_std=3.0)
    cams = make_cams(W=18, H=14, n=2, jitter=0.2)
    ref = _render(g, cams, "reference", mode)
    out = _render(g, cams, "numba", mode, tile_size=16)
    assert out.alphas.dtype == torch.float32
    assert_outputs_close(ref, out, atol=2e-5, rtol=1e-4)


def test_numba_float32_gradients_match_reference():
    g = random_scene(40, deg=1, seed=6, opacity_std=3.0)
    cams = make_cams(W=18, H=14, cx=8.0)
    _, ref = _loss_grads(g, cams, "reference")
    _, out = _loss_grads(g, cams, "numba")
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, atol=1e-5 * a.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_one_and_two_threads_identical(dtype):
    """Tiles are dealt to the threads and every (tile, Gaussian) pair has its own gradient row: the result
    does not depend on the thread count, bit for bit."""
    g = random_scene(60, deg=1, seed=7, opacity_std=3.0, dtype=dtype)
    cams = make_cams(W=29, H=21, n=2, jitter=0.2, dtype=dtype)
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(_loss_grads(g, cams, "numba", tile_size=8))
    assert_outputs_close(results[0][0], results[1][0], atol=0, rtol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_numba_gradcheck_float64():
    assert gradcheck_render("numba", "RGB+ED")


def test_dispatch_auto_forced_and_fallback(monkeypatch):
    g = random_scene(10, seed=10)
    cams = make_cams(W=12, H=10)
    auto = rasterize(g, cams)
    assert auto.meta.backend == "torch" and auto.meta.kernel == "numba" and auto.meta.tile_size == 16
    forced = rasterize(g, cams, cpu_kernel="torch")
    assert forced.meta.kernel == "torch" and forced.meta.tile_size == 4
    assert_outputs_close(forced, auto)
    assert rasterize(g, cams, backend="reference").meta.kernel == ""
    with pytest.raises(ValueError, match="cpu_kernel"):
        rasterize(g, cams, cpu_kernel="cuda")
    with pytest.raises(ValueError, match="compile"):
        rasterize(g, cams, cpu_kernel="numba", compile=True)
    with pytest.raises(ValueError, match="float32/float64"):
        rasterize(g.to(dtype=torch.float16), cams, cpu_kernel="numba")
    # numba missing: auto falls back to the torch kernel, forcing it names the extra
    monkeypatch.setattr(tiled_numba, "numba_available", lambda: False)
    assert rasterize(g, cams).meta.kernel == "torch"
    with pytest.raises(ImportError, match=r"forward3d\[fast\]"):
        rasterize(g, cams, cpu_kernel="numba")


def test_numba_concurrent_python_threads():
    """Two Python threads rasterizing at once (a viewer next to an optimisation loop) get the serial result."""
    import threading

    g = random_scene(30, seed=12)
    cams = make_cams(W=20, H=16)
    want = rasterize(g, cams, cpu_kernel="numba").colors
    got, errors = [], []

    def work():
        try:
            for _ in range(5):
                got.append(rasterize(g, cams, cpu_kernel="numba").colors)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 10
    for c in got:
        torch.testing.assert_close(c, want, atol=0, rtol=0)
