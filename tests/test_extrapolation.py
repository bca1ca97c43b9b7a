"""The extrapolation benchmark protocol (Invisible Stitch) on the synthetic room."""

from __future__ import annotations

import numpy as np
import pytest

from forward3d.data.synthetic import SyntheticScene
from forward3d.eval.extrapolation import evaluate_extrapolation_pair, lift_into_view, score_extrapolation
from forward3d.models.depth_completion import AlignedCompleter
from forward3d.pipelines.oracle import OracleView


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def pair():
    """Frames i and i + 10 of the orbit (36 degrees apart): part of j is not seen by i."""
    scene = SyntheticScene(num_frames=12, width=64, height=48, num_boxes=4)
    fi, fj = scene.frame(0), scene.frame(10)
    return scene, fi, fj


def test_protocol_oracle_vs_unaligned(pair):
    scene, fi, fj = pair
    args = (fj.image, fj.depth, fi.depth, fi.K, fi.c2w, fj.K, fj.c2w)
    exact = OracleView(scene, np.eye(4), fj.K, 64, 48)  # views given in world coordinates
    wrong = OracleView(scene, np.eye(4), fj.K, 64, 48, depth_scale=1.3, depth_shift=0.2)

    oracle = evaluate_extrapolation_pair(AlignedCompleter(exact), *args)
    assert 0.1 < oracle.coverage < 0.95 and oracle.num_pixels > 100
    assert oracle.mae < 1e-3  # an oracle completion scores ~0
    unaligned = evaluate_extrapolation_pair(AlignedCompleter(wrong), *args, use_sparse=False)
    assert unaligned.num_pixels == oracle.num_pixels
    assert unaligned.mae > 0.3  # clearly worse
    aligned = evaluate_extrapolation_pair(AlignedCompleter(wrong), *args)  # scale/shift-aligned monocular
    assert aligned.mae < 0.2 * unaligned.mae


def test_lift_and_score(pair):
    scene, fi, fj = pair
    sparse, covered = lift_into_view(fi.depth, fi.K, fi.c2w, fj.K, fj.c2w, 64, 48)
    assert sparse.shape == covered.shape == (48, 64)
    assert np.median(np.abs(sparse - fj.depth)[covered]) < 0.01  # the lifted points land on the surface
    assert (sparse[~covered] == 0).all()
    s = score_extrapolation(fj.depth + 0.1, fj.depth, covered)
    assert s.mae == pytest.approx(0.1, abs=1e-5) and s.num_pixels == int((~covered).sum())
    assert np.isnan(score_extrapolation(fj.depth, fj.depth, np.ones((48, 64), bool)).mae)
    with pytest.raises(ValueError, match="shapes differ"):
        score_extrapolation(fj.depth, fj.depth[:, :3], covered)
    with pytest.raises(ValueError, match="no valid pixel"):
        lift_into_view(np.zeros((48, 64)), fi.K, fi.c2w, fj.K, fj.c2w, 64, 48)


def test_bench_extrapolation_protocol_oracle_and_broken(tmp_path):
    """`forward3d bench extrapolation` on a synthetic TUM copy: the oracle scores ~0, the completer
    without sparse input is clearly worse, with it in between; one JSON per sequence and a summary."""
    import json

    from forward3d.cli import main
    from forward3d.io.sources import write_layout

    scene = SyntheticScene(num_frames=24, width=64, height=48, num_boxes=4)
    write_layout(scene.frames(), tmp_path / "data" / "room", "tum")
    data = str(tmp_path / "data")
    common = ["bench", "extrapolation", "--data", data, "--no-plots"]
    assert main(common + ["--backend", "oracle", "--out", str(tmp_path / "o")]) == 0
    oracle = json.loads((tmp_path / "o" / "summary.json").read_text())["mean"]
    assert oracle["mae"] < 2e-3 and 0 < oracle["coverage"] < 1 and oracle["num_pairs"] == 1
    assert main(common + ["--backend", "aligned", "--out", str(tmp_path / "a")]) == 0
    aligned = json.loads((tmp_path / "a" / "summary.json").read_text())["mean"]["mae"]
    assert aligned > 20 * oracle["mae"] and aligned < 2.0  # extending the known depth: far worse than the truth
    assert "metres (mae)" in (tmp_path / "a" / "summary.md").read_text()
    assert main(common + ["--backend", "aligned", "--no-sparse", "--out", str(tmp_path / "n")]) == 2  # needs a model
    assert (tmp_path / "a" / "sequences" / "room.json").is_file() and (tmp_path / "a" / "summary.md").is_file()
    assert main(common + ["--backend", "rgbd", "--out", str(tmp_path / "x")]) == 2
