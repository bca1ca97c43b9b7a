"""The CUT3R protocols (7scenes-cut3r, nrgbd-cut3r) on tiny synthetic stand-ins: every 200th / 500th
frame, 512x384 input, the centre 224x224 scored; the oracle scores ~0, a spoiled one does not."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from forward3d.bench.protocol import get_protocol
from forward3d.bench.report import write_summary
from forward3d.bench.runner import BenchConfig, SequenceTask, find_sequences, open_sequence, run_sequence
from forward3d.data.synthetic import SyntheticScene
from forward3d.io.sources import write_layout

pytestmark = pytest.mark.usefixtures("one_thread")

GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _scene() -> SyntheticScene:
    return SyntheticScene(num_frames=3, width=64, height=48, seed=2, num_boxes=3)


def _fill(folder: Path, names: dict[int, list[str]], stride: int, n: int) -> None:
    """Frames between the scored ones: hard links to frame 0's files (the reader lists them, the
    protocol's stride never opens them), so a stride of 200 needs no 400 rendered frames."""
    for i in range(n):
        if i % stride:
            for pattern in names[0]:
                os.link(folder / pattern.format(0), folder / pattern.format(i))


def _write_7scenes(root: Path, stride: int) -> Path:
    seq = write_layout(_scene().frames(), root / "chess", "7scenes", sequence="seq-01")
    seq = root / "chess" / "seq-01"
    parts = ["frame-{:06d}.color.png", "frame-{:06d}.depth.png", "frame-{:06d}.pose.txt"]
    for k in (2, 1):  # frame k -> frame k * stride
        for p in parts:
            (seq / p.format(k)).rename(seq / p.format(k * stride))
    _fill(seq, {0: parts}, stride, 2 * stride + 1)
    return root


def _write_nrgbd(root: Path, stride: int) -> Path:
    from PIL import Image

    scene = root / "scene"
    (scene / "images").mkdir(parents=True)
    (scene / "depth").mkdir()
    frames = list(_scene().frames())
    n = 2 * stride + 1
    for k, f in enumerate(frames):
        Image.fromarray(f.image).save(scene / "images" / f"img{k * stride}.png")
        Image.fromarray(np.round(f.depth * 1000).astype(np.uint16)).save(scene / "depth" / f"depth{k * stride}.png")
    for i in range(n):
        if i % stride:
            os.link(scene / "images" / "img0.png", scene / "images" / f"img{i}.png")
            os.link(scene / "depth" / "depth0.png", scene / "depth" / f"depth{i}.png")
    blocks = ["\n".join(" ".join(f"{v:.17g}" for v in row) for row in frames[i // stride if i % stride == 0 else 0].c2w @ GL)
              for i in range(n)]
    (scene / "poses.txt").write_text("\n".join(blocks) + "\n")
    (scene / "focal.txt").write_text(f"{frames[0].K[0, 0]:.17g}\n")
    return root


def _standin(tmp_path: Path, protocol: str):
    p = get_protocol(protocol)
    root = tmp_path / "data"
    (_write_nrgbd if protocol.startswith("nrgbd") else _write_7scenes)(root, p.stride)
    (seq,) = find_sequences(root, p)
    return seq


def _task(protocol: str, seq, out: Path, **config) -> SequenceTask:
    return SequenceTask(protocol, seq, "oracle", config, str(out), "k")


def test_cut3r_declarations():
    for name, stride, nc in (("7scenes-cut3r", 200, 0.727), ("nrgbd-cut3r", 500, 0.837)):
        p = get_protocol(name)
        spann3r = get_protocol(name.replace("cut3r", "spann3r"))
        assert (p.stride, p.crop, p.score_crop) == (stride, (512, 384), (224, 224))
        assert p.recon == spann3r.recon and p.layouts == spann3r.layouts and p.metrics == spann3r.metrics
        assert {x.method: x.metrics["normal_consistency"] for x in p.published}["CUT3R"] == nc
        assert all(x.source == "CUT3R paper (2nd)" for x in p.published)


def test_cut3r_input_is_512_and_score_window_is_the_centre_224(tmp_path):
    from forward3d.bench.scoring import GroundTruthCollector, centre_window

    seq = _standin(tmp_path, "7scenes-cut3r")
    p = get_protocol("7scenes-cut3r")
    gt = GroundTruthCollector(open_sequence(seq, p), points=True, window=p.score_crop)
    frames = list(gt)
    assert [f.index for f in frames] == [0, 200, 400]
    assert frames[0].image.shape == (384, 512, 3)
    assert centre_window(512, 384, (224, 224), 512, 384) == ((144, 368), (80, 304))
    assert centre_window(512, 384, (224, 224), 256, 192) == ((72, 184), (40, 152))  # a half-resolution map
    uv = np.concatenate(gt.pixels) * [512, 384]
    assert uv[:, 0].min() > 144 and uv[:, 0].max() < 368 and uv[:, 1].min() > 80 and uv[:, 1].max() < 304
    d = gt.first_depth
    assert (d[:80] == 0).all() and (d[:, 368:] == 0).all() and (d[80:304, 144:368] > 0).mean() > 0.9
    with pytest.raises(ValueError, match="larger than"):
        centre_window(200, 150, (224, 224), 200, 150)


@pytest.mark.parametrize("protocol", ["7scenes-cut3r", "nrgbd-cut3r"])
def test_cut3r_protocols_oracle_and_broken(tmp_path, protocol):
    seq = _standin(tmp_path, protocol)
    # point_stride 2 (fast): the oracle's points are every other pixel of the ground truth's (completion
    # ~8 mm: the sampling), accuracy is exact
    good = run_sequence(_task(protocol, seq, tmp_path / "good", point_stride=2, scale=0.5))["metrics"]
    assert good["num_frames"] == 3
    assert good["accuracy"] < 3e-3 and good["completion"] < 1.5e-2 and abs(good["scale"] - 2.0) < 0.02, good
    bad = run_sequence(_task(protocol, seq, tmp_path / "bad", point_stride=2, point_noise=0.05))["metrics"]
    assert bad["accuracy"] > 0.02, bad
    # the summary puts the CUT3R paper's numbers beside ours and names the sampling
    summary, files = write_summary(tmp_path / "good", get_protocol(protocol), BenchConfig(protocol, data="d"), [seq],
                                   "k", [], plots=False)
    assert summary["sampling"]["score_crop"] == (224, 224) and summary["num_finished"] == 1
    acc = "0.1260" if protocol.startswith("7scenes") else "0.0990"
    assert f"published: CUT3R paper (2nd) | CUT3R | {acc}" in files["summary_md"].read_text()


def test_fused_cloud_is_cut_to_the_windows(tmp_path):
    """A method with a fused cloud only: its points outside every camera's centre window are not scored."""
    from forward3d.bench.scoring import GroundTruthCollector, score_reconstruction
    from forward3d.pipelines.oracle import GroundTruthBackend

    seq = _standin(tmp_path, "7scenes-cut3r")
    p = get_protocol("7scenes-cut3r")
    gt = GroundTruthCollector(open_sequence(seq, p), points=True, window=p.score_crop)
    recon = GroundTruthBackend(point_stride=2).run(gt, progress=False)
    full = len(recon.points)
    recon.point_maps = recon.confidences = None
    m, _ = score_reconstruction(recon, gt, p)
    # an approximation: a point inside one camera's window may be hidden in that camera (not in the
    # ground truth of its window), so the oracle's accuracy is ~1 cm here, not ~0 as with point maps
    assert m["accuracy"] < 2e-2 and m["completion"] < 1.5e-2
    from forward3d.bench.scoring import _in_some_window

    kept = _in_some_window(recon, np.asarray(recon.points.points), p.score_crop).sum()
    assert 0.1 * full < kept < 0.8 * full
