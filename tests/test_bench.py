"""The benchmark harness: protocols on tiny synthetic stand-ins of their layouts (the oracle back-end
scores ~0, a spoiled one does not), ATE against evo, distances against Open3D, the process-pool and Ray
executors (one sequence made to fail), resuming, the CLI and a real run on hololens_000."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from forward3d.bench.protocol import Protocol, Published, available_protocols, get_protocol, register_protocol
from forward3d.bench.runner import BenchConfig, SequenceTask, find_sequences, run_benchmark, run_sequence
from forward3d.data.synthetic import SyntheticScene
from forward3d.io.sources import write_layout

pytestmark = pytest.mark.usefixtures("one_thread")

GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _scene(n: int, seed: int = 0, w: int = 64, h: int = 48) -> SyntheticScene:
    return SyntheticScene(num_frames=n, width=w, height=h, seed=seed, num_boxes=3)


def _write_posed(root: Path, scene: SyntheticScene) -> Path:
    """The ``posed`` layout (images/ depth/ poses.txt K.txt), written independently of the reader."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    rows = []
    for f in scene.frames():
        Image.fromarray(f.image).save(root / "images" / f"{f.index:05d}.png")
        Image.fromarray(np.round(f.depth * 1000).astype(np.uint16)).save(root / "depth" / f"{f.index:05d}.png")
        rows.append(" ".join(f"{v:.17g}" for v in f.c2w.reshape(-1)))
    (root / "poses.txt").write_text("\n".join(rows) + "\n")
    np.savetxt(root / "K.txt", scene.K)
    return root


def _write_nrgbd(root: Path, scene: SyntheticScene) -> Path:
    """The Neural RGB-D layout (img{i}.png, depth{i}.png in mm, 4x4 OpenGL c2w blocks, focal.txt)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    blocks = []
    for f in scene.frames():
        Image.fromarray(f.image).save(root / "images" / f"img{f.index}.png")
        Image.fromarray(np.round(f.depth * 1000).astype(np.uint16)).save(root / "depth" / f"depth{f.index}.png")
        blocks.append("\n".join(" ".join(f"{v:.17g}" for v in row) for row in f.c2w @ GL))
    (root / "poses.txt").write_text("\n".join(blocks) + "\n")
    (root / "focal.txt").write_text(f"{scene.K[0, 0]:.17g}\n")
    return root


def _task(protocol: str, seq, out: Path, backend: str = "oracle", **config) -> SequenceTask:
    return SequenceTask(protocol, seq, backend, config, str(out), "k")


# --------------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------------


def test_protocol_registry_and_declarations():
    names = available_protocols()
    for n in ("tum-ate", "7scenes-ate", "replica-slam3r", "7scenes-spann3r", "nrgbd-spann3r", "re10k-1view"):
        assert n in names
    p = get_protocol("7scenes-spann3r")
    assert (p.stride, p.crop, p.recon.kind, p.recon.icp_threshold) == (20, (224, 224), "median-first-icp", 0.1)
    assert {x.method: x.metrics["accuracy"] for x in p.published} == {"Spann3R": 0.0342, "DUSt3R-GA": 0.0286}
    r = get_protocol("replica-slam3r").recon
    assert (r.kind, r.conf_threshold, r.voxel_size, r.plane_icp_threshold, r.num_pairs) == \
        ("ransac-umeyama-icp", 3.0, 0.005, 0.02, 200_000)
    assert get_protocol("tum-ate").trajectory_alignment == "sim3"
    with pytest.raises(ValueError, match="unknown benchmark protocol 'nope'.*tum-ate"):
        get_protocol("nope")
    with pytest.raises(ValueError, match="metrics.*'fps'"):
        Protocol("x", "trajectory", "t", metrics=("ate_rmse",), published=(Published("p", "m", {"fps": 1.0}),))
    with pytest.raises(ValueError, match="already registered"):
        register_protocol(Protocol("tum-ate", "trajectory", "other", metrics=("ate_rmse",)))


def test_find_sequences(tmp_path):
    scene = _scene(4)
    write_layout(scene.frames(), tmp_path / "d" / "rgbd_a", "tum")
    write_layout(scene.frames(), tmp_path / "d" / "chess", "7scenes", sequence="seq-01")
    write_layout(scene.frames(), tmp_path / "d" / "chess", "7scenes", sequence="seq-02")
    assert [s.name for s in find_sequences(tmp_path / "d", get_protocol("tum-ate"))] == ["rgbd_a"]
    seqs = find_sequences(tmp_path / "d", get_protocol("7scenes-ate"))
    assert [(s.name, s.sequence) for s in seqs] == [("chess/seq-01", "seq-01"), ("chess/seq-02", "seq-02")]
    with pytest.raises(ValueError, match="no sequence in a layout of protocol replica-slam3r"):
        find_sequences(tmp_path / "d", get_protocol("replica-slam3r"))


# --------------------------------------------------------------------------------------------------
# Every protocol on its stand-in: the oracle scores ~0, a spoiled method does not
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol,layout", [("tum-ate", "tum"), ("7scenes-ate", "7scenes"), ("ate", "posed")])
def test_trajectory_protocols_oracle_and_broken(tmp_path, protocol, layout):
    scene = _scene(12, seed=1)
    root = tmp_path / "data" / "seq_a"
    if layout == "posed":
        _write_posed(root, scene)
    else:
        write_layout(scene.frames(), root, layout)
    (seq,) = find_sequences(tmp_path / "data", get_protocol(protocol))
    good = run_sequence(_task(protocol, seq, tmp_path / "good"))["metrics"]
    assert good["ate_rmse"] < 1e-4 and good["num_frames_with_gt"] == 12 and abs(good["scale"] - 1) < 1e-4
    # a scale-free method with a wrong global scale: Sim(3) alignment takes it out
    scaled = run_sequence(_task(protocol, seq, tmp_path / "scaled", scale=0.5))["metrics"]
    assert scaled["ate_rmse"] < 1e-4 and abs(scaled["scale"] - 2.0) < 1e-3
    bad = run_sequence(_task(protocol, seq, tmp_path / "bad", pose_noise=0.05))["metrics"]
    assert 0.02 < bad["ate_rmse"] < 0.2
    saved = json.loads((tmp_path / "bad" / "sequences" / f"{seq.name.replace('/', '__')}.json").read_text())
    assert saved["metrics"]["ate_rmse"] == bad["ate_rmse"] and saved["protocol"] == protocol


def _recon_standin(tmp_path: Path, protocol: str):
    p = get_protocol(protocol)
    n = 2 * p.stride + 1  # three scored frames
    if protocol.startswith("nrgbd"):
        _write_nrgbd(tmp_path / "data" / "scene", _scene(n, seed=2, w=48, h=36))
    elif protocol.startswith("replica"):
        write_layout(_scene(4, seed=2, w=48, h=36).frames(), tmp_path / "data" / "room0", "replica")
    else:
        write_layout(_scene(n, seed=2, w=48, h=36).frames(), tmp_path / "data" / "chess", "7scenes", sequence="seq-01")
    (seq,) = find_sequences(tmp_path / "data", p)
    return seq


@pytest.mark.parametrize("protocol", ["7scenes-spann3r", "nrgbd-spann3r", "replica-slam3r"])
def test_reconstruction_protocols_oracle_and_broken(tmp_path, protocol):
    seq = _recon_standin(tmp_path, protocol)
    # the oracle with a wrong global scale (a scale-free method): the protocol's alignment takes it out
    good = run_sequence(_task(protocol, seq, tmp_path / "good", point_stride=1, scale=0.5))["metrics"]
    assert good["num_frames"] == (4 if protocol.startswith("replica") else 3)
    assert good["accuracy"] < 3e-3 and good["completion"] < 3e-3 and abs(good["scale"] - 2.0) < 0.02, good
    assert good["normal_consistency"] > 0.95
    bad = run_sequence(_task(protocol, seq, tmp_path / "bad", point_stride=1, point_noise=0.05))["metrics"]
    assert bad["accuracy"] > 0.02 and bad["normal_consistency"] < good["normal_consistency"] - 0.02, bad


def test_spann3r_frames_are_the_dust3r_crop(tmp_path):
    from forward3d.bench.runner import open_sequence

    seq = _recon_standin(tmp_path, "7scenes-spann3r")
    frames = list(open_sequence(seq, get_protocol("7scenes-spann3r")))
    assert [f.index for f in frames] == [0, 20, 40]
    f = frames[0]
    assert f.image.shape == (224, 224, 3) and f.depth.shape == (224, 224)
    assert np.allclose(f.K[:2, 2], [112.0, 112.0], atol=0.6) and f.K[0, 0] == pytest.approx(f.K[1, 1], rel=5e-3)


def test_slam3r_alignment_without_point_maps_uses_cameras(tmp_path):
    """A method with a fused cloud only (e.g. rgbd) is aligned by its camera centres, then ICP."""
    from forward3d.bench.scoring import GroundTruthCollector, score_reconstruction
    from forward3d.bench.runner import open_sequence
    from forward3d.pipelines.oracle import GroundTruthBackend

    seq = _recon_standin(tmp_path, "replica-slam3r")
    p = get_protocol("replica-slam3r")
    gt = GroundTruthCollector(open_sequence(seq, p), points=True)
    recon = GroundTruthBackend(point_stride=1, scale=0.5).run(gt, progress=False)
    recon.point_maps = recon.confidences = None
    m, _ = score_reconstruction(recon, gt, p)
    assert "camera centres" in m["alignment_steps"][0]
    assert m["accuracy"] < 3e-3 and abs(m["scale"] - 2.0) < 0.02


def test_re10k_1view_folded_in(tmp_path):
    from forward3d.data.re10k import write_re10k_layout

    root = tmp_path / "re10k"
    scenes = {f"seq{i}": SyntheticScene(num_frames=12, width=96, height=64, seed=10 + i, speed=0.5) for i in range(2)}
    write_re10k_layout(root, scenes, split="test", colmap_scale=0.5)
    (root / "test_files.txt").write_text("seq0 0 5 10 3\nseq1 1 6 11 0\n")
    opts = {"split": str(root / "test_files.txt"), "height": 64, "width": 96, "pad": 32}
    res = run_benchmark(BenchConfig("re10k-1view", data=str(root), backend="oracle", out=str(tmp_path / "o"),
                                    plots=False), opts)
    assert res.summary["mean"]["psnr_+5"] == pytest.approx(100.0) and sorted(res.ran) == ["seq0", "seq1"]
    blank = run_benchmark(BenchConfig("re10k-1view", data=str(root), backend="blank", out=str(tmp_path / "b"),
                                      plots=False), opts)
    assert blank.summary["mean"]["psnr_+10"] < 20
    table = (tmp_path / "b" / "summary.md").read_text()
    assert "published: Flash3D paper | Flash3D | 28.4600" in table
    with pytest.raises(ValueError, match="flash3d: give the checkpoint with --weights"):
        run_benchmark(BenchConfig("re10k-1view", data=str(root), backend="flash3d", out=str(tmp_path / "f"),
                                  plots=False), opts)


# --------------------------------------------------------------------------------------------------
# Parity with evo and Open3D
# --------------------------------------------------------------------------------------------------


def test_ate_matches_evo_sim3():
    pytest.importorskip("evo")
    from evo.core import metrics
    from evo.core.trajectory import PosePath3D

    from forward3d.bench.scoring import score_trajectory
    from forward3d.geometry.se3 import so3_exp
    from forward3d.types import Reconstruction

    rng = np.random.default_rng(3)
    n = 60
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, :3, 3] = np.cumsum(rng.normal(0, 0.05, (n, 3)), 0)
    gt[:, :3, :3] = so3_exp(np.cumsum(rng.normal(0, 0.05, (n, 3)), 0))
    S = np.eye(4)
    S[:3, :3] = 0.7 * so3_exp(np.array([0.3, -0.2, 0.5]))
    S[:3, 3] = [1.0, -2.0, 0.5]
    est = np.einsum("ij,njk->nik", S, gt)
    est[:, :3, :3] /= 0.7  # rigid poses, the world scaled by 0.7
    est[:, :3, 3] += rng.normal(0, 0.02, (n, 3))
    ref_path, est_path = PosePath3D(poses_se3=list(gt)), PosePath3D(poses_se3=list(est))
    est_path.align(ref_path, correct_scale=True)  # evo_ape -as
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref_path, est_path))
    evo_stats = ape.get_all_statistics()
    ours, _ = score_trajectory(Reconstruction(est, np.tile(np.eye(3), (n, 1, 1)), (64, 48)), list(gt), "sim3")
    assert abs(ours["ate_rmse"] - evo_stats["rmse"]) < 1e-6
    assert abs(ours["ate_mean"] - evo_stats["mean"]) < 1e-6
    assert abs(ours["ate_median"] - evo_stats["median"]) < 1e-6
    assert abs(ours["ate_max"] - evo_stats["max"]) < 1e-6


def test_distances_match_open3d():
    o3d = pytest.importorskip("open3d")
    from forward3d.eval.recon import recon_metrics

    rng = np.random.default_rng(4)
    a, b = rng.uniform(0, 1, (3000, 3)), rng.uniform(0, 1, (2000, 3)) + 0.01
    pa = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(a))
    pb = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(b))
    acc = np.asarray(pa.compute_point_cloud_distance(pb))
    comp = np.asarray(pb.compute_point_cloud_distance(pa))
    m = recon_metrics(a, b, thresholds=(0.05,))
    assert m["accuracy"] == pytest.approx(acc.mean(), abs=1e-9)
    assert m["completion"] == pytest.approx(comp.mean(), abs=1e-9)
    assert m["accuracy_median"] == pytest.approx(np.median(acc), abs=1e-9)
    assert m["chamfer"] == pytest.approx(0.5 * (acc.mean() + comp.mean()), abs=1e-9)
    p, r = (acc < 0.05).mean(), (comp < 0.05).mean()
    assert m["fscore@0.05"] == pytest.approx(2 * p * r / (p + r), abs=1e-9)


# --------------------------------------------------------------------------------------------------
# Executors, failures, resuming, the CLI
# --------------------------------------------------------------------------------------------------


def _four_tum_sequences(root: Path) -> Path:
    for i in range(4):
        write_layout(_scene(6, seed=20 + i, w=32, h=24).frames(), root / f"seq{i}", "tum")
    for png in (root / "seq2" / "rgb").iterdir():  # a broken download: the images are gone
        png.unlink()
    return root


def test_cli_process_pool_failure_retry_and_resume(tmp_path, capsys):
    from forward3d.cli import main

    data = _four_tum_sequences(tmp_path / "tum")
    out = tmp_path / "out"
    argv = ["bench", "tum-ate", "--data", str(data), "--backend", "oracle", "--pose-noise", "0.01",
            "--out", str(out), "--workers", "2"]
    assert main(argv) == 1  # a sequence failed
    text = capsys.readouterr().out
    assert "3/4 sequences with oracle (3 run, 0 skipped as finished, 1 failed)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["sequences"]) == ["seq0", "seq1", "seq3"]
    (fail,) = summary["failed"]
    assert fail["sequence"] == "seq2" and fail["attempts"] == 2 and "seq2" in fail["errors"][-1]
    md = (out / "summary.md").read_text()
    assert "| **mean (3)** | **oracle** |" in md and "published: MASt3R-SLAM paper | MASt3R-SLAM (calibrated)" in md
    assert "seq2 (2 attempts)" in md
    assert (out / "plots" / "error_per_sequence.png").stat().st_size > 1000
    assert (out / "plots" / "trajectory_seq0.png").is_file()
    assert 0.001 < summary["mean"]["ate_rmse"] < 0.05
    mtime = (out / "sequences" / "seq0.json").stat().st_mtime_ns
    assert main(argv) == 1
    assert "(0 run, 3 skipped as finished, 1 failed)" in capsys.readouterr().out
    assert (out / "sequences" / "seq0.json").stat().st_mtime_ns == mtime
    # the same options from Python (defaults filled in) are the same run: finished sequences are skipped
    same = run_benchmark(BenchConfig("tum-ate", data=str(data), backend="oracle", out=str(out), plots=False,
                                     max_sequences=2), {"pose_noise": 0.01})
    assert same.ran == [] and same.skipped == ["seq0", "seq1"]
    # other options are another run: nothing is skipped
    res = run_benchmark(BenchConfig("tum-ate", data=str(data), backend="oracle", out=str(out), plots=False,
                                    retries=0, max_sequences=2), {"pose_noise": 0.02})
    assert sorted(res.ran) == ["seq0", "seq1"] and res.skipped == []


def test_cli_errors(tmp_path, capsys):
    from forward3d.cli import main

    assert main(["bench", "nope", "--data", str(tmp_path), "--backend", "oracle"]) == 2
    assert "unknown benchmark protocol 'nope'" in capsys.readouterr().err
    assert main(["bench", "tum-ate", "--data", str(tmp_path), "--backend", "nope"]) == 2
    assert "unknown back-end 'nope'" in capsys.readouterr().err
    assert main(["bench", "tum-ate", "--data", str(tmp_path / "missing"), "--backend", "oracle"]) == 2
    assert "expected a dataset folder" in capsys.readouterr().err


def test_ray_executor_retries_and_reports(tmp_path):
    ray = pytest.importorskip("ray")
    data = _four_tum_sequences(tmp_path / "tum")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        res = run_benchmark(BenchConfig("tum-ate", data=str(data), backend="oracle", out=str(tmp_path / "out"),
                                        executor="ray", num_cpus=1, plots=False))
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    assert sorted(res.ran) == ["seq0", "seq1", "seq3"]
    (fail,) = res.failed
    assert fail["sequence"] == "seq2" and fail["attempts"] == 2 and "seq2" in fail["errors"][-1]
    assert res.summary["mean"]["ate_rmse"] < 1e-4 and seconds < 600


@pytest.mark.slow
def test_real_hololens_rgbd_table(shared_dir, tmp_path):
    """forward3d bench ate on the real HoloLens sequence: the oracle (the reader's poses replayed) scores 0,
    the rgbd back-end's row is written with its (real, currently poor: see docs/bench.md) ATE."""
    from forward3d.cli import main

    data = shared_dir / "data" / "hololens_000"
    oracle = run_benchmark(BenchConfig("ate", data=str(data), backend="oracle", out=str(tmp_path / "oracle"),
                                       plots=False))
    assert oracle.summary["sequences"]["hololens_000"]["ate_rmse"] < 1e-9
    out = tmp_path / "rgbd"
    assert main(["bench", "ate", "--data", str(data), "--backend", "rgbd", "--out", str(out)]) == 0
    m = json.loads((out / "summary.json").read_text())["sequences"]["hololens_000"]
    assert m["num_frames_with_gt"] == 200 and np.isfinite(m["ate_rmse"]) and m["ate_rmse"] > 0
    assert "| hololens_000 | rgbd |" in (out / "summary.md").read_text()
    assert (out / "plots" / "trajectory_hololens_000.png").is_file()


@pytest.mark.parametrize("layout", ["posed", "nrgbd"])
def test_posed_folders_are_recon_inputs(layout, tmp_path):
    """A device capture (images/ depth/ poses.txt K.txt) and NRGBD are detected by open_frames and
    ``forward3d recon`` reads their intrinsics, depth and ground-truth poses (scored in metrics.json)."""
    from forward3d.cli import main
    from forward3d.io.sources import detect_layout, open_frames

    scene = _scene(6, seed=3, w=96, h=72)
    root = (_write_posed if layout == "posed" else _write_nrgbd)(tmp_path / layout, scene)
    assert detect_layout(root) == layout
    src = open_frames(root)
    assert src.has_gt_poses and src.has_depth and len(src) == 6
    gt = list(scene.frames())
    for f, g in zip(src, gt):
        np.testing.assert_allclose(f.K, g.K, atol=1e-6)
        np.testing.assert_allclose(f.c2w, g.c2w, atol=1e-9)
        assert np.abs(f.depth - g.depth).max() < 1e-3
    pytest.importorskip("open3d")
    out = tmp_path / "out"
    assert main(["recon", str(root), "--out", str(out), "--no-previews", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_frames_with_gt"] == 6 and m["ate_se3"]["rmse"] < 0.02, m
