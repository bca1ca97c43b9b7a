"""What a new user hits first on real input (issue 12): interrupted runs, output folders, permissions,
messages, degenerate metrics, CLI polish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mjpeg_server import LiveMJPEGServer

from forward3d.cli import main
from forward3d.data.synthetic import SyntheticConfig, SyntheticScene

ROOT = Path(__file__).resolve().parents[1]
SMALL = "fixtures/slam3r/small"


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", FORWARD3D_NO_PROGRESS="1")
    return env


def test_sigint_saves_a_partial_result(shared_dir, tmp_path):
    """Ctrl-C on a running live reconstruction: the frame is finished, what exists is saved, marked partial."""
    small = shared_dir / SMALL
    scene = SyntheticScene(SyntheticConfig(seed=3, num_frames=12, width=120, height=90, trajectory="handheld"))
    server = LiveMJPEGServer([f.image for f in scene.frames()], fps=15)
    server.start()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "forward3d", "recon", server.url, "--backend", "slam3r", "--online",
           "--i2p", str(small / "i2p_weights.safetensors"), "--l2w", str(small / "l2w_weights.safetensors"),
           "--i2p-config", str(small / "i2p_config.json"), "--l2w-config", str(small / "l2w_config.json"),
           "--keyframe-stride", "1", "--conf-thres-l2w", "1.5", "--num-points-save", "2000", "--device", "cpu",
           "--no-previews", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while server.frames_sent < 30 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 130, (stdout, stderr)
    assert "partial" in stderr.lower() and "PARTIAL" in stdout
    header = json.loads((out / "reconstruction.json").read_text())
    assert header["interrupted"] is True and len(header["frame_names"]) >= 5
    assert (out / "point_cloud.ply").is_file() and (out / "trajectory_tum.txt").is_file()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def _tum(root: Path, n: int = 6) -> Path:
    from forward3d.io.sources import write_layout

    write_layout(SyntheticScene(num_frames=n, width=96, height=72).frames(), root, "tum")
    return root


def test_outputs_honour_the_umask(tmp_path):
    data = _tum(tmp_path / "tum")
    old = os.umask(0o022)
    try:
        assert main(["recon", str(data), "--out", str(tmp_path / "out"), "--no-previews", "--voxel-size", "0.04"]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert (out.stat().st_mode & 0o777) == 0o755
    for p in out.rglob("*"):
        want = 0o755 if p.is_dir() else 0o644
        assert (p.stat().st_mode & 0o777) == want, (p, oct(p.stat().st_mode))


def _as_other_user(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m forward3d ARGS`` as an unprivileged user: uid 65534 (nobody) when the tests run as
    root (with the system Python 3.11 and this venv's packages, since the venv's interpreter lives under
    /root), else as ourselves."""
    import sysconfig

    env = _env()
    exe, pre = sys.executable, None
    if os.geteuid() == 0:
        exe = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        assert os.path.exists(exe), f"{exe} is needed to run as another user"
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
        env["HOME"] = "/tmp"

        def pre():
            os.setgid(65534)
            os.setuid(65534)
    return subprocess.run([exe, "-m", "forward3d", *args], env=env, capture_output=True, text=True,
                          preexec_fn=pre, timeout=300)


@pytest.fixture
def shared_tmp():
    """A temporary folder other users can enter (pytest's tmp_path lives under a 0700 folder)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="forward3d-perm-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unwritable_out_is_refused_before_any_work(shared_tmp):
    data = _tum(shared_tmp / "tum")
    for p in [data, *data.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    ro = shared_tmp / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o555)
    t0 = time.perf_counter()
    r = _as_other_user(["recon", str(data), "--out", str(ro / "out")])
    assert r.returncode == 2, r
    assert "not writable" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 60 and not (ro / "out").exists()
    # another user can read what forward3d wrote (files were 0600 before)
    old = os.umask(0o022)
    try:
        assert main(["recon", str(data), "--out", str(shared_tmp / "out"), "--no-previews", "--voxel-size", "0.04"]) == 0
    finally:
        os.umask(old)
    r = _as_other_user(["eval", "traj", str(shared_tmp / "out" / "trajectory_tum.txt"), str(data / "groundtruth.txt")])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["file", "under-file"])
def test_out_that_is_or_lies_under_a_file(tmp_path, capsys, kind):
    data = _tum(tmp_path / "tum", 3)
    f = tmp_path / "f"
    f.write_text("x")
    out = f if kind == "file" else f / "sub"
    assert main(["recon", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and ("a file" in err) and len(err.strip().splitlines()) == 1
    assert f.read_text() == "x"


def test_rerun_replaces_the_whole_output_set(tmp_path):
    data = _tum(tmp_path / "tum")
    out = tmp_path / "out"
    assert main(["recon", str(data), "--out", str(out), "--voxel-size", "0.04"]) == 0
    assert (out / "previews").is_dir() and (out / "metrics.json").is_file()
    stale = out / "previews" / "stale.png"
    stale.write_bytes(b"x")
    assert main(["recon", str(data), "--out", str(out), "--no-previews", "--voxel-size", "0.04"]) == 0
    assert not (out / "previews").exists()  # no old previews beside the new results
    (out / "notes.txt").write_text("mine")  # foreign content appears in a forward3d folder: still ours
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    assert main(["recon", str(data), "--out", str(foreign)]) == 2
    assert (foreign / "thesis.tex").read_text() == "keep"
    assert main(["recon", str(data), "--out", str(foreign), "--overwrite", "--no-previews"]) == 0
    assert not (foreign / "thesis.tex").exists()


def _straight_path(n=20, length=0.1, noise=2e-4, seed=0):
    from forward3d.geometry import make_se3, so3_exp

    rng = np.random.default_rng(seed)
    R = so3_exp([0.1, 0.4, -0.2])
    gt = np.stack([make_se3(R, [length * i / (n - 1), 0.0, 0.0]) for i in range(n)])
    pred = gt.copy()
    pred[:, :3, 3] += rng.normal(0, noise, (n, 3))
    return pred, gt


def test_degenerate_ate_alignment_is_detected_and_reported(tmp_path, capsys, caplog):
    from forward3d.eval.traj import ate, trajectory_metrics
    from forward3d.io.trajectory import write_tum

    pred, gt = _straight_path()
    a = ate(pred, gt, "se3")
    assert a["degenerate"] and a["conditioning"] < 0.05
    assert a["rot_rmse_deg"] > 1.0  # Umeyama's free rotation about the line: a lie of degrees
    f = ate(pred, gt, "first")
    assert not f["degenerate"] and f["rot_rmse_deg"] < 0.1 and f["rmse"] < 1e-3
    tm = trajectory_metrics(pred, list(gt))
    assert tm.alignment_degenerate and tm.ate_first_pose.rot_rmse_deg < 0.1
    assert "nearly collinear" in caplog.text
    assert tm.to_dict()["ate_first_pose"]["rot_rmse_deg"] < 0.1
    write_tum(tmp_path / "p.txt", np.arange(20.0), pred)
    write_tum(tmp_path / "g.txt", np.arange(20.0), gt)
    assert main(["eval", "traj", str(tmp_path / "p.txt"), str(tmp_path / "g.txt"), "--out", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "ILL-POSED" in out and "ATE first-pose rot_rmse_deg [deg]" in out
    assert all("[" in ln for ln in out.splitlines() if ln.startswith(("ATE", "RPE")))  # units on every metric
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["ate"]["degenerate"] and m["ate_first_pose"]["rot_rmse_deg"] < 0.1
    # a well-conditioned trajectory is not flagged
    from forward3d.data.synthetic import SyntheticScene

    c2w = SyntheticScene(num_frames=20, width=32, height=24).c2w
    assert not ate(c2w, c2w, "se3")["degenerate"]


def test_rgb_only_recon_with_a_depth_model(tmp_path, monkeypatch):
    """RGB frames + a metric depth network -> the rgbd back-end (an oracle network returning the true depth)."""
    from forward3d.api import SourceConfig, reconstruct
    from forward3d.io.sources import write_layout

    scene = SyntheticScene(num_frames=10, width=96, height=72)
    gt = {f.image.tobytes(): f.depth for f in scene.frames()}
    write_layout((f.with_(depth=None) for f in scene.frames()), tmp_path / "imgs", "images")

    class Oracle:
        name, metric = "oracle", True

        def predict(self, image, K=None):
            import torch

            key = (image[0].permute(1, 2, 0) * 255).round().byte().numpy().tobytes()
            return torch.from_numpy(gt[key])[None]

    K = scene.K
    src = SourceConfig(intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    run = reconstruct(tmp_path / "imgs", "rgbd", {"voxel_size": 0.04}, source=src, progress=False,
                      depth_estimator=Oracle())
    from forward3d.eval.traj import ate

    assert len(run.recon) == 10 and run.recon.failures == [] and len(run.recon.points) > 1000
    assert ate(run.recon.c2w, scene.c2w)["rmse"] < 0.02

    class Relative(Oracle):
        metric = False

    with pytest.raises(ValueError, match="METRIC"):
        reconstruct(tmp_path / "imgs", "rgbd", source=src, progress=False, depth_estimator=Relative())


def test_depth_model_option_on_the_command_line(tmp_path, capsys):
    pytest.importorskip("transformers")
    from test_depth_backbones import _tiny_depth_anything

    from forward3d.io.sources import write_layout

    scene = SyntheticScene(num_frames=4, width=64, height=48)
    write_layout((f.with_(depth=None) for f in scene.frames()), tmp_path / "imgs", "images")
    _tiny_depth_anything(tmp_path / "dm", True)
    K = scene.K
    rc = main(["recon", str(tmp_path / "imgs"), "--depth-model", str(tmp_path / "dm"), "--intrinsics",
               *map(str, (K[0, 0], K[1, 1], K[0, 2], K[1, 2])), "--out", str(tmp_path / "out"), "--no-previews"])
    assert rc == 0, capsys.readouterr().err  # random weights: poor geometry, but the route runs end to end
    assert (tmp_path / "out" / "trajectory_tum.txt").is_file()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/forward3d-pwned",))


def test_weights_messages_say_what_is_wrong(tmp_path, capsys):
    import torch

    from forward3d.hub import WeightsError, load_state_dict, resolve_source

    for missing in ("ckpt/slam3r_i2p", str(tmp_path / "nope.pth"), "nope.pth"):
        with pytest.raises(WeightsError, match="no such file or folder") as ei:
            resolve_source(missing)
        assert ("HF_HUB_OFFLINE" in str(ei.value)) == (missing == "ckpt/slam3r_i2p")  # the hub only for hub-like ids
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil()}, evil)
    with pytest.raises(WeightsError) as ei:
        load_state_dict(evil)
    msg = str(ei.value)
    assert "pickled code" in msg and "system" in msg and "never loads" in msg
    assert "weights_only=False" not in msg and not Path("/tmp/forward3d-pwned").exists()
    from forward3d.io.sources import write_layout

    write_layout(SyntheticScene(num_frames=3, width=64, height=48).frames(), tmp_path / "imgs", "images")
    rc = main(["recon", str(tmp_path / "imgs"), "--backend", "slam3r", "--i2p", str(evil), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "pickled code" in err and len(err.strip().splitlines()) == 1


def test_short_clip_is_not_silently_empty(tmp_path):
    """5 frames moving < 10 cm made one keyframe; a voxel needed two fused frames: 0 points, exit 0."""
    from forward3d.io.sources import write_layout

    scene = SyntheticScene(num_frames=5, width=96, height=72, speed=0.4)
    assert np.linalg.norm(scene.c2w[-1][:3, 3] - scene.c2w[0][:3, 3]) < 0.1
    write_layout(scene.frames(), tmp_path / "clip", "tum")
    out = tmp_path / "out"
    assert main(["recon", str(tmp_path / "clip"), "--out", str(out), "--no-previews"]) == 0
    rec = json.loads((out / "reconstruction.json").read_text())
    assert rec["metadata"]["num_integrated"] == 5 and len(rec["metadata"]["keyframes"]) == 1
    from forward3d.io.ply import read_point_cloud

    assert len(read_point_cloud(out / "point_cloud.ply").points) > 1000


def test_single_fused_frame_lowers_the_weight_threshold():
    from forward3d.pipelines.rgbd import RGBDBackend, RGBDConfig

    scene = SyntheticScene(num_frames=3, width=96, height=72, speed=0.2)
    rec = RGBDBackend(RGBDConfig(fuse_first=0)).run(list(scene.frames()), progress=False)
    assert rec.metadata["num_integrated"] == 1 and rec.metadata["weight_threshold"] == 0.0
    assert len(rec.points) > 1000 and len(rec.mesh.faces) > 1000


def test_depth_out_of_range_names_the_scale(tmp_path, capsys):
    """Depth stored in 0.1 mm but read as mm (10x too deep): every pixel beyond --depth-max, an empty
    volume and an open3d traceback. Now one message with the factor and the option."""
    from forward3d.io.sources import write_layout

    scene = SyntheticScene(num_frames=4, width=96, height=72)
    write_layout(scene.frames(), tmp_path / "rw", "redwood", depth_scale=10000)
    assert main(["recon", str(tmp_path / "rw"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "beyond --depth-max" in err and "--depth-scale 10000" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main(["recon", str(tmp_path / "rw"), "--depth-scale", "10000", "--out", str(tmp_path / "ok"),
                 "--no-previews"]) == 0


def test_metres_saved_as_integers_are_called_so(tmp_path, capsys):
    from forward3d.io.sources import write_layout

    scene = SyntheticScene(num_frames=4, width=96, height=72)
    write_layout(scene.frames(), tmp_path / "rw", "redwood", depth_scale=1)  # uint16 values 1..4
    assert main(["recon", str(tmp_path / "rw"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "metres saved as integers" in err and "rw/depth/000000.png" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["mm_as_metres_png", "float_mm"])
def test_splat_depth_unit_mismatch(tmp_path, capsys, case):
    """A depth PNG of 3 mm values (metres saved as mm) or float millimetres (3000 m) rendered six black views."""
    from PIL import Image

    from forward3d.io.depth_units import suggest_depth_scale

    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "im.png")
    if case == "mm_as_metres_png":
        Image.fromarray(np.full((24, 32), 3, np.uint16)).save(tmp_path / "d.png")
        dpath, expect = tmp_path / "d.png", "metres saved as integers"
    else:
        np.save(tmp_path / "d.npy", np.full((24, 32), 3000.0, np.float32))
        dpath, expect = tmp_path / "d.npy", "--depth-scale 1000"
    assert main(["splat", str(tmp_path / "im.png"), "--depth", str(dpath), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expect in err and dpath.name in err and "Traceback" not in err
    assert suggest_depth_scale(3000.0) == 1000.0 and suggest_depth_scale(15000.0) in (4000.0, 5000.0, 10000.0)
    if case == "float_mm":  # the suggested option works
        assert main(["splat", str(tmp_path / "im.png"), "--depth", str(dpath), "--depth-scale", "1000",
                     "--orbit-frames", "0", "--out", str(tmp_path / "o")]) == 0


def test_splat_help_defaults_progress_and_cheap_orbit(tmp_path, capsys, monkeypatch):
    """`splat` looked hung: ~400 s rendering a 48-frame 1024 px orbit with no progress; options lacked help."""
    from PIL import Image

    from forward3d.pipelines.splat import SplatConfig

    with pytest.raises(SystemExit):
        main(["splat", "--help"])
    helptext = capsys.readouterr().out
    helptext = helptext[helptext.index("options:"):]
    for opt in ("--video", "--background", "--orbit-frames", "--orbit-size", "--device", "--out"):
        line = helptext[helptext.index("\n  " + opt):].split("\n  --")[1]
        assert len(line.split(None, 1)) == 2 and ("default" in line or opt == "--orbit-size"), line
    assert "(default: forward3d-splat)" in " ".join(helptext.split())
    cfg = SplatConfig()
    assert cfg.orbit_frames * cfg.orbit_size ** 2 * 20 <= 48 * 1024 ** 2  # >= 20x cheaper than before
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "im.png")
    Image.fromarray(np.full((24, 32), 2000, np.uint16)).save(tmp_path / "d.png")
    monkeypatch.delenv("FORWARD3D_NO_PROGRESS", raising=False)
    assert main(["splat", str(tmp_path / "im.png"), "--depth", str(tmp_path / "d.png"), "--orbit-frames", "3",
                 "--video", "gif", "--fov", "60", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "views:" in err and "/6" in err and "orbit:" in err and "/3" in err  # a bar per render loop
    assert (tmp_path / "o" / "orbit.gif").is_file()


def test_flash3d_wrong_keys_name_the_file(tmp_path):
    import torch

    from forward3d.hub import WeightsError
    from forward3d.models.flash3d import Flash3D

    torch.save({"model": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other.pth: not a Flash3D checkpoint.*foo.weight"):
        Flash3D.from_pretrained(tmp_path / "other.pth")
