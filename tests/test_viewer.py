"""The viser viewer in-process (a real server, no browser) and ``forward3d view`` as a command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from forward3d.io.ply import read_point_cloud, write_point_cloud
from forward3d.types import Gaussians, PointCloud
from forward3d.viz.scene import SceneModel
from forward3d.viz.viewer import Viewer, ViewerConfig, format_count, stats_text
from test_viewer_scene import _corrupt_plys, small_recon

ROOT = Path(__file__).resolve().parents[1]


def _settle(viewer: Viewer) -> None:
    assert viewer.wait_idle(20.0), "the viewer did not finish redrawing"


@pytest.fixture
def viewer():
    scene = SceneModel.from_reconstruction(small_recon(n=6, mesh=True), title="oracle")
    v = Viewer(scene, port=0)
    _settle(v)
    yield v
    v.stop()


def test_viewer_draws_scene_and_reports_counts(viewer):
    scene = viewer.scene
    assert viewer.server.get_host() == "127.0.0.1"
    html = urllib.request.urlopen(viewer.url, timeout=10).read()
    assert b"<html" in html.lower()
    expected = scene.select("frames", upto=5, min_confidence=float(viewer.min_conf.value))
    assert viewer.last_selection.shown == expected.shown > 0
    assert "**frame 6 / 6**" in viewer.stats_md.content
    assert f"points shown: {format_count(expected.shown)} of {format_count(expected.eligible)}" in viewer.stats_md.content
    assert sorted(viewer._frustums) == scene.frustum_positions(100) == list(range(6))
    assert "mesh" in viewer._static
    # the timeline: frame 2, then only that frame, then a confidence threshold
    viewer.frame_slider.value = 2
    _settle(viewer)
    assert viewer.last_selection.shown == scene.select("frames", upto=2, min_confidence=viewer.min_conf.value).shown
    assert sorted(viewer._frustums) == [0, 1, 2] and "**frame 3 / 6**" in viewer.stats_md.content
    viewer.accumulate.value = False
    viewer.min_conf.value = 3.0
    _settle(viewer)
    sel = viewer.last_selection
    assert sel.shown == scene.select("frames", upto=2, only_current=True, min_confidence=3.0).shown < sel.total
    viewer.accumulate.value = True
    viewer.min_conf.value = viewer.min_conf.min
    viewer.frame_slider.value = 5
    viewer.budget.value = 1000
    _settle(viewer)
    assert viewer.last_selection.eligible > 4000 and abs(viewer.last_selection.shown - 1000) < 150


def test_viewer_timeline_playback(viewer):
    viewer.fps.value = 50.0
    viewer.set_playing(True)  # at the end: restarts from the first frame
    assert viewer.current_frame() == 0 and viewer.play_button.label == "pause"
    t_end = time.monotonic() + 10
    while viewer._playing and time.monotonic() < t_end:
        time.sleep(0.02)
    assert not viewer._playing and viewer.current_frame() == 5 and viewer.play_button.label == "play"


def test_viewer_follows_frames_added_live():
    scene = SceneModel(title="live")
    v = Viewer(scene, port=0)
    try:
        _settle(v)
        assert v.stats_md.content == "empty scene"
        recon = small_recon(n=4)
        redraws = v.redraws
        for i in range(4):
            scene.add_frame(i, recon.frame_names[i], recon.c2w[i], recon.K[i], recon.image_size,
                            points=recon.point_maps[i], colors=recon.point_map_colors[i], tracking_ok=i != 2)
        _settle(v)
        assert v.frame_slider.max == 3 and v.current_frame() == 3
        assert v.last_selection.shown == scene.select("frames").shown > 0
        assert sorted(v._frustums) == [0, 1, 2, 3]
        assert "tracking failed on 1 frames" in v.stats_md.content
        assert v.redraws - redraws <= 5  # coalesced
        scene.set_info(metrics={"ate_rmse_m": 0.0123})
        assert "0.0123" in v.metrics_md.content
    finally:
        v.stop()


def test_viewer_gaussians_and_downloads(tmp_path):
    g = Gaussians.from_activated(torch.randn(200, 3), torch.randn(200, 4), torch.rand(200, 3) * 0.1 + 0.01,
                                 torch.rand(200) * 0.9 + 0.05, colors=torch.rand(200, 3))
    scene = SceneModel()
    scene.set_geometry(gaussians=g, cloud=PointCloud(np.random.default_rng(0).normal(size=(300, 3))))
    with Viewer(scene, port=0, config=ViewerConfig(max_gaussians=100)) as v:
        _settle(v)
        assert "gaussians" in v._static
        name, data = v.download_bytes("ply")
        (tmp_path / name).write_bytes(data)
        assert name == "points.ply" and len(read_point_cloud(tmp_path / name)) == 300
        name, data = v.download_bytes("glb_points")
        assert name == "points.glb" and data[:4] == b"glTF"
        p = write_point_cloud(tmp_path / "f.ply", PointCloud(np.zeros((5, 3)) + 1))
        assert v.download_bytes(p) == ("f.ply", p.read_bytes())


def test_viewer_bad_input():
    with pytest.raises(TypeError, match="SceneModel"):
        Viewer("scene", port=0)
    for kwargs in (dict(max_points=0), dict(point_size=-1.0), dict(fps=0.0), dict(max_frustums=True)):
        with pytest.raises(ValueError, match="ViewerConfig"):
            ViewerConfig(**kwargs)


def test_stats_text():
    assert stats_text(0, 0, "", None) == "empty scene"
    from forward3d.viz.scene import Selection

    s = stats_text(4, 10, "f4", Selection(np.zeros((1234, 3)), None, 5000, 2000), failures=2)
    assert "**frame 5 / 10** (`f4`)" in s and "points shown: 1,234 of 2,000 (of 5,000" in s and "2 frames" in s


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "forward3d", *args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


def test_cli_view_bad_input_is_one_clear_line(tmp_path, capsys):
    from forward3d.cli import main

    (tmp_path / "a.xyz").write_text("1 2 3\n")
    cases = {"unsupported file type '.xyz'": tmp_path / "a.xyz", "no such file": tmp_path / "missing.ply"}
    for kind, p in _corrupt_plys(tmp_path).items():
        cases[p.name] = p
    for expect, p in cases.items():
        assert main(["view", str(p), "--port", "0"]) == 2, p
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("forward3d view: error:") and expect in lines[0], lines
    # the same from a real process: exit code 2, one line, no traceback
    r = _cli("view", str(cases["truncated.ply"]), "--port", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [f"forward3d view: error: {_one_line(r.stderr)}"]


def _one_line(err: str) -> str:
    return err.strip().split("forward3d view: error: ", 1)[1]


def test_cli_view_serves_and_exits_cleanly_on_ctrl_c(tmp_path):
    write_point_cloud(tmp_path / "pc.ply", PointCloud(np.random.default_rng(0).normal(size=(1000, 3))))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "forward3d", "view", str(tmp_path / "pc.ply"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        t_end = time.monotonic() + 60
        while url is None and time.monotonic() < t_end:
            line = proc.stdout.readline()
            if not line:
                break
            if "open http://" in line:
                url = line.split("open ", 1)[1].split()[0]
        assert url is not None and url.startswith("http://127.0.0.1:"), "no URL printed"
        assert b"<html" in urllib.request.urlopen(url, timeout=10).read().lower()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in out
