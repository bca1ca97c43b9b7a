"""``forward3d eval recon|traj`` end to end on tiny files (and the lazy ``nvs`` hook)."""

import json
import math
import sys

import numpy as np
import pytest

from forward3d.cli import main
from forward3d.geometry import make_se3, make_sim3, so3_exp
from forward3d.io.ply import write_point_cloud
from forward3d.io.trajectory import write_redwood_log, write_tum
from forward3d.types import PointCloud


def plane(n=30, spacing=0.01, z=0.0):
    u, v = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing, indexing="ij")
    return np.stack([u.ravel(), v.ravel(), np.full(n * n, z)], 1).astype(np.float32)


def trajectory(n=30):
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        out.append(make_se3(so3_exp([0.0, -a, 0.05 * math.sin(a)]),
                            [math.cos(a), 0.1 * math.sin(3 * a), math.sin(a)]))
    return np.stack(out)


def apply_sim3(S, c2w):
    s = np.cbrt(np.linalg.det(S[:3, :3]))
    out = c2w.copy()
    out[:, :3, :3] = S[:3, :3] / s @ c2w[:, :3, :3]
    out[:, :3, 3] = c2w[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    return out


def test_eval_recon(tmp_path, capsys):
    write_point_cloud(tmp_path / "gt.ply", PointCloud(plane()))
    write_point_cloud(tmp_path / "pred.ply", PointCloud(plane(z=0.015)))
    rc = main(["eval", "recon", str(tmp_path / "pred.ply"), str(tmp_path / "gt.ply"),
               "--thresholds", "0.01", "0.02", "--out", str(tmp_path / "m.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "fscore@0.02" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["metrics"]["accuracy"] == pytest.approx(0.015, abs=1e-6)
    assert m["metrics"]["fscore@0.01"] == 0.0 and m["metrics"]["fscore@0.02"] == 1.0
    assert m["thresholds"] == [0.01, 0.02]


def test_eval_recon_missing_file(tmp_path, capsys):
    write_point_cloud(tmp_path / "gt.ply", PointCloud(plane()))
    rc = main(["eval", "recon", str(tmp_path / "nope.ply"), str(tmp_path / "gt.ply")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err and "nope.ply" in err


def test_eval_traj_tum_sim3(tmp_path, capsys):
    gt = trajectory()
    ts = np.arange(len(gt)) * 0.1
    pred = apply_sim3(make_sim3(so3_exp([0.2, 0.5, -0.1]), [1, 2, 3], 0.5), gt)
    write_tum(tmp_path / "gt.txt", ts, gt)
    # prediction: every other frame, timestamps slightly off
    write_tum(tmp_path / "pred.txt", ts[::2] + 0.003, pred[::2])
    rc = main(["eval", "traj", str(tmp_path / "pred.txt"), str(tmp_path / "gt.txt"), "--align", "sim3",
               "--out", str(tmp_path / "t.json"), "--aligned-out", str(tmp_path / "aligned.txt")])
    assert rc == 0
    assert "ATE rmse" in capsys.readouterr().out
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["association"] == "timestamp" and r["num_matched"] == 15
    assert r["ate"]["rmse"] < 1e-6 and r["ate"]["scale"] == pytest.approx(2.0, rel=1e-6)
    assert r["rpe"]["trans_rmse"] < 1e-6
    aligned = np.loadtxt(tmp_path / "aligned.txt")
    assert aligned.shape == (15, 8)
    np.testing.assert_allclose(aligned[:, 1:4], gt[::2, :3, 3], atol=1e-6)
    # rigid alignment cannot undo the scale
    main(["eval", "traj", str(tmp_path / "pred.txt"), str(tmp_path / "gt.txt"), "--out", str(tmp_path / "t2.json")])
    assert json.loads((tmp_path / "t2.json").read_text())["ate"]["rmse"] > 0.1


def test_eval_traj_redwood_by_index(tmp_path):
    gt = trajectory()
    rng = np.random.default_rng(0)
    pred = gt.copy()
    pred[:, :3, 3] += rng.normal(scale=0.01, size=(len(gt), 3))
    write_redwood_log(tmp_path / "pred.log", pred)
    write_tum(tmp_path / "gt.txt", np.arange(len(gt)) * 0.1, gt)  # one side without timestamps: by index
    rc = main(["eval", "traj", str(tmp_path / "pred.log"), str(tmp_path / "gt.txt"), "--align", "none",
               "--out", str(tmp_path / "t.json")])
    assert rc == 0
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["association"] == "index"
    assert 0.005 < r["ate"]["rmse"] < 0.03


def test_eval_traj_errors(tmp_path, capsys):
    gt = trajectory()
    write_redwood_log(tmp_path / "a.log", gt)
    write_redwood_log(tmp_path / "b.log", gt[:10])
    assert main(["eval", "traj", str(tmp_path / "a.log"), str(tmp_path / "b.log")]) == 2
    assert "found 30 and 10" in capsys.readouterr().err
    write_redwood_log(tmp_path / "c.log", gt[:2])
    assert main(["eval", "traj", str(tmp_path / "c.log"), str(tmp_path / "c.log")]) == 2
    assert "too few" in capsys.readouterr().err
    assert main(["eval", "traj", str(tmp_path / "missing.txt"), str(tmp_path / "a.log")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    write_tum(tmp_path / "p.txt", np.arange(5.0), gt[:5])
    write_tum(tmp_path / "g.txt", np.arange(5.0) + 100, gt[:5])
    assert main(["eval", "traj", str(tmp_path / "p.txt"), str(tmp_path / "g.txt")]) == 2
    assert "max-diff" in capsys.readouterr().err


def test_eval_nvs_options_come_from_its_config(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "nvs", "--help"])
    out = capsys.readouterr().out
    for flag in ("--protocol", "--data", "--split", "--weights", "--method", "--lpips-weights", "--device"):
        assert flag in out, flag
    assert "RealEstate10K" in out  # the subcommand has a description
    assert main(["eval", "nvs", "--data", "d", "--split", "s.txt"]) == 2
    assert "exactly one of --weights" in capsys.readouterr().err


def test_eval_recon_does_not_import_the_nvs_stack(tmp_path):
    import subprocess

    write_point_cloud(tmp_path / "gt.ply", PointCloud(plane()))
    code = ("import sys; from forward3d.cli import main; "
            f"rc = main(['eval', 'recon', {str(tmp_path / 'gt.ply')!r}, {str(tmp_path / 'gt.ply')!r}]); "
            "assert rc == 0; assert 'forward3d.eval.nvs' not in sys.modules, 'nvs imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
