"""``forward3d splat --multiview`` with DepthSplat, end to end on the synthetic room with ground-truth poses.

The network is the parity fixture's tiny model with its random weights (``../shared/fixtures/depthsplat``):
the outputs are not a good scene, but they must be valid Gaussians that survive the PLY round trip, and
the files, renders and summary must be there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forward3d.cli import main
from forward3d.data.synthetic import SyntheticScene
from forward3d.io.gaussians import read_gaussians_ply, read_splat, write_gaussians_ply
from forward3d.io.trajectory import write_tum
from forward3d.io.video import write_png
from forward3d.models.depthsplat import DepthSplat
from forward3d.pipelines.depthsplat import prepare_views, splat_multiview


@pytest.fixture(scope="module")
def weights(shared_dir):
    return shared_dir / "fixtures" / "depthsplat" / "weights.safetensors"


@pytest.fixture(scope="module")
def room():
    scene = SyntheticScene(seed=3, num_frames=12, width=96, height=64)
    frames = [scene.frame(i) for i in (0, 4)]
    return scene, frames


def test_prepare_views_rescales_and_crops_intrinsics():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (120, 200, 3), dtype=np.uint8) for _ in range(2)]
    K = np.array([[150.0, 0, 100], [0, 150, 60], [0, 0, 1]])
    out, K2 = prepare_views(imgs, K, multiple=16, short_side=64)
    assert out.shape == (2, 64, 96, 3)  # 120x200 -> 64x107 -> crop 64x96
    # a 3D point lands on the same image content: (u - x0) * s relation
    s = 107 / 200
    assert np.isclose(K2[0, 0, 0], 150 * s) and np.isclose(K2[0, 0, 2], 100 * s - 5)
    out, K3 = prepare_views(imgs, K, size=(32, 48))
    assert out.shape == (2, 32, 48, 3) and np.isclose(K3[1, 1, 1], 150 * 32 / 120)  # cover: scale by the larger ratio
    with pytest.raises(ValueError, match="multiples of 16"):
        prepare_views(imgs, K, size=(30, 48))
    with pytest.raises(ValueError, match="view 1"):
        prepare_views([imgs[0], imgs[1][:100]], K)


def test_splat_multiview_valid_gaussians_and_ply_round_trip(room, weights, tmp_path, one_thread):
    scene, frames = room
    model = DepthSplat.from_pretrained(weights)
    c2w = np.stack([f.c2w for f in frames])
    res = splat_multiview(model, [f.image for f in frames], scene.K, c2w, near=0.3, far=20.0, short_side=None)
    g = res.gaussians
    assert len(g) == 2 * 64 * 96 and res.depths.shape == (2, 64, 96)
    for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh):
        assert torch.isfinite(t).all()
    assert ((res.depths >= 0.3 - 1e-4) & (res.depths <= 20.0 + 1e-3)).all()
    # every Gaussian sits on its pixel's ray at the predicted depth, in the world frame of the poses
    cam0 = (np.linalg.inv(c2w[0]) @ np.c_[g.means[:64 * 96].double().numpy(), np.ones(64 * 96)].T).T[:, :3]
    assert np.allclose(cam0[:, 2], res.depths[0].reshape(-1), rtol=1e-4, atol=1e-4)
    path = tmp_path / "scene.ply"
    write_gaussians_ply(path, g)
    back = read_gaussians_ply(path)
    assert len(back) == len(g)
    assert torch.allclose(back.means, g.means) and torch.allclose(back.sh, g.sh, atol=1e-6)
    assert torch.allclose(back.scales, g.scales, rtol=1e-5)
    res2 = splat_multiview(model, [f.image for f in frames], scene.K, c2w, near=0.3, far=20.0, short_side=None,
                           min_opacity=0.5)
    assert 0 < len(res2.gaussians) < len(g)
    assert (res2.gaussians.opacity_logits.sigmoid() >= 0.5).all()


def test_splat_cli_multiview(room, weights, tmp_path):
    scene, frames = room
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"view{i}.png")
        write_png(paths[-1], f.image)
    write_tum(tmp_path / "poses.txt", np.arange(len(frames), dtype=np.float64), np.stack([f.c2w for f in frames]))
    K = scene.K
    out = tmp_path / "out"
    rc = main(["splat", "--multiview", *map(str, paths), "--poses", str(tmp_path / "poses.txt"),
               "--intrinsics", str(K[0, 0]), str(K[1, 1]), str(K[0, 2]), str(K[1, 2]), "--weights", str(weights),
               "--near", "0.3", "--far", "20", "--short-side", "64", "--out", str(out), "--orbit-frames", "3",
               "--video", "gif", "--device", "cpu"])
    assert rc == 0
    for name in ("scene.ply", "scene.splat", "views/view_0.png", "views/view_1.png", "depth_1.png", "orbit.gif",
                 "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "depthsplat" and summary["size"] == [96, 64] and summary["views"] == 2
    assert len(summary["psnr_input_views"]) == 2 and all(np.isfinite(summary["psnr_input_views"]))
    g = read_gaussians_ply(out / "scene.ply")
    assert len(g) == summary["num_gaussians"] == 2 * 64 * 96 and len(read_splat(out / "scene.splat")) == len(g)


def test_splat_cli_multiview_errors(room, weights, tmp_path, capsys):
    scene, frames = room
    p = tmp_path / "a.png"
    write_png(p, frames[0].image)
    one = str(tmp_path / "one.txt")
    write_tum(one, np.zeros(1), frames[0].c2w[None])
    cases = [
        (["--multiview", str(p), "--poses", one, "--weights", str(weights)], "at least 2 images"),
        (["--multiview", str(p), str(p), "--weights", str(weights)], "--poses"),
        (["--multiview", str(p), str(p), "--poses", one, "--weights", str(weights)], "1 poses for 2"),
        (["--multiview", str(p), str(p), "--poses", one], "--weights is required"),
        ([str(p), "--multiview", str(p), str(p), "--poses", one, "--weights", str(weights)], "not both"),
    ]
    for args, message in cases:
        assert main(["splat", *args, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err, message
    assert not (tmp_path / "o").exists()
