"""`forward3d splat` (unproject baseline and Flash3D) and `forward3d render` end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from forward3d.cli import main
from forward3d.data.synthetic import SyntheticScene
from forward3d.eval.image import psnr
from forward3d.io.gaussians import read_gaussians, read_splat
from forward3d.models.flash3d import Flash3D, Flash3DConfig
from forward3d.pipelines.splat import render_views, unproject_gaussians


@pytest.fixture(scope="module")
def rgbd(tmp_path_factory):
    d = tmp_path_factory.mktemp("rgbd")
    f = SyntheticScene(num_frames=1, width=96, height=72, seed=5).frame(0)
    Image.fromarray(f.image).save(d / "image.png")
    Image.fromarray((f.depth * 1000).astype(np.uint16)).save(d / "depth.png")
    return d, f


def test_unproject_baseline_reproduces_source_view(rgbd):
    _, f = rgbd
    g = unproject_gaussians(f.image, f.depth, f.K)
    assert len(g) == 96 * 72
    # centres lie on the pixels' rays at their depth
    assert torch.allclose(g.means[0, 2], torch.tensor(float(f.depth[0, 0])))
    from forward3d.pipelines.splat import SplatResult

    t = lambda a: torch.from_numpy(a).float() / 255  # noqa: E731
    scores = {}
    for fp in (0.3, 0.5):
        res = SplatResult(unproject_gaussians(f.image, f.depth, f.K, footprint=fp), f.K, 96, 72, f.depth, "u")
        scores[fp] = psnr(t(render_views(res, np.eye(4)[None])[0]), t(f.image)).item()
    # the rasterizer's 0.3 px^2 dilation blurs neighbours into each other: smaller discs are sharper
    assert scores[0.3] > 22 and scores[0.5] > 18 and scores[0.3] > scores[0.5], scores
    blank = psnr(torch.full_like(t(f.image), 0.5), t(f.image)).item()
    assert scores[0.5] > blank + 8


def test_splat_cli_baseline_outputs(rgbd, tmp_path):
    d, f = rgbd
    out = tmp_path / "out"
    rc = main(["splat", str(d / "image.png"), "--depth", str(d / "depth.png"), "--intrinsics",
               *map(str, [f.K[0, 0], f.K[1, 1], f.K[0, 2], f.K[1, 2]]), "--out", str(out), "--orbit-frames", "4",
               "--video", "gif"])
    assert rc == 0
    for name in ("scene.ply", "scene.splat", "depth.png", "orbit.gif", "views/forward.png", "summary.json"):
        assert (out / name).is_file(), name
    g = read_gaussians(out / "scene.ply")
    assert len(g) == 96 * 72 and len(read_splat(out / "scene.splat")) == len(g)
    assert json.loads((out / "summary.json").read_text())["method"] == "unproject"


def test_splat_cli_with_flash3d_checkpoint(rgbd, tmp_path):
    d, f = rgbd
    torch.manual_seed(0)
    model = Flash3D(Flash3DConfig(num_layers=18, height=64, width=96))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from forward3d.models.flash3d.model import save_checkpoint

    save_checkpoint(ckpt / "model.pth", model)
    (ckpt / "config.json").write_text(json.dumps(model.config.to_dict()))
    out = tmp_path / "out"
    rc = main(["splat", str(d / "image.png"), "--depth", str(d / "depth.png"), "--fov", "70", "--weights", str(ckpt),
               "--out", str(out), "--orbit-frames", "0"])
    assert rc == 0
    g = read_gaussians(out / "scene.ply")
    assert len(g) == 2 * 128 * 160 and g.sh_degree == 1 and torch.isfinite(g.means).all()
    # --dtype bfloat16: autocast inside, fp32 geometry out, same Gaussians to bf16 precision
    out16 = tmp_path / "out16"
    assert main(["splat", str(d / "image.png"), "--depth", str(d / "depth.png"), "--fov", "70", "--weights",
                 str(ckpt), "--out", str(out16), "--orbit-frames", "0", "--dtype", "bfloat16"]) == 0
    g16 = read_gaussians(out16 / "scene.ply")
    span = (g.means.max(0).values - g.means.min(0).values).max()
    assert len(g16) == len(g) and (g16.means - g.means).abs().max() < 0.01 * span


def test_splat_cli_errors(rgbd, tmp_path, capsys):
    d, _ = rgbd
    assert main(["splat", str(d / "image.png"), "--out", str(tmp_path)]) == 2
    assert "depth" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert main(["splat", str(tmp_path / "broken.png"), "--depth", str(d / "depth.png")]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_render_cli_orbit_and_colmap(rgbd, tmp_path):
    d, f = rgbd
    out = tmp_path / "splat"
    assert main(["splat", str(d / "image.png"), "--depth", str(d / "depth.png"), "--fov", "70", "--out", str(out),
                 "--orbit-frames", "0"]) == 0
    r = tmp_path / "render"
    assert main(["render", str(out / "scene.ply"), "--out", str(r), "--frames", "3", "--width", "48",
                 "--height", "36", "--video", "mp4"]) == 0
    pngs = sorted(r.glob("*.png"))
    assert len(pngs) == 3 and (r / "video.mp4").stat().st_size > 0
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (36, 48, 3) and img.max() > 0
    # cameras from a COLMAP model: the source camera itself reproduces the image
    from forward3d.io.colmap import write_colmap_text
    from forward3d.types import Reconstruction

    write_colmap_text(tmp_path / "colmap", Reconstruction(np.eye(4)[None], f.K[None], (96, 72), ["src"]))
    r2 = tmp_path / "render2"
    assert main(["render", str(out / "scene.ply"), "--cameras", str(tmp_path / "colmap"), "--out", str(r2),
                 "--video", "none"]) == 0
    img = np.asarray(Image.open(r2 / "src.png")).astype(np.float32) / 255
    assert psnr(torch.from_numpy(img), torch.from_numpy(f.image.astype(np.float32) / 255)).item() > 18
