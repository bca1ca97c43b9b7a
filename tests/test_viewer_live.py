"""The live view: :class:`LiveViewer` fed with streaming Updates (a real viser server in-process), and
``forward3d recon --view`` on a synthetic video delivering its frames to a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from browser import browser, dismiss_notifications, doc_screenshot, element_box, wait_for_text, wait_for_view  # noqa: F401
from forward3d.types import FrameStatus, Update
from forward3d.viz.viewer import LiveViewConfig, LiveViewer, live_status_text
from mjpeg_server import LiveMJPEGServer
from test_viewer_scene import small_recon

ROOT = Path(__file__).resolve().parents[1]


def _updates(recon, fail: int | None = None) -> list[Update]:
    return [Update(i, recon.frame_names[i], recon.c2w[i], recon.K[i], recon.image_size,
                   status=FrameStatus("failed", "lost") if i == fail else FrameStatus("registered"),
                   points=recon.point_maps[i], colors=recon.point_map_colors[i], confidence=recon.confidences[i],
                   image=recon.point_map_colors[i], num_frames=i + 1, frames_per_s=5.0)
            for i in range(len(recon))]


def test_live_view_wait_for_a_browser_times_out_and_is_validated():
    with pytest.raises(ValueError, match="--view-wait"):
        LiveViewConfig(view=True, wait=-1)
    with LiveViewer(LiveViewConfig(view=True, port=0)) as live:
        t0 = time.perf_counter()
        assert live.wait_for_client(0.3) is False  # nobody opened the page: the run starts anyway
        assert 0.25 < time.perf_counter() - t0 < 20


def test_live_viewer_shows_updates_never_blocks_and_applies_corrections():
    n = 8
    recon = small_recon(n=n)
    ups = _updates(recon, fail=3)
    with LiveViewer(LiveViewConfig(view=True, port=0, interval=0.05, max_points_per_frame=300)) as live:
        v = live.viewer
        assert v.server.get_host() == "127.0.0.1" and "waiting" in v.live_md.content
        # the producer never waits: with the viewer's drawing lock held, pushes still return. A push that
        # waited for the lock could not return before we release it, so no timing bound is needed.
        with v._lock:
            producer = threading.Thread(target=lambda: [live.push(u) for u in ups[:5]], daemon=True)
            producer.start()
            producer.join(timeout=20)
            assert not producer.is_alive(), "push() blocked while the viewer was drawing"
            time.sleep(0.2)
        assert live.wait_idle(20)
        assert len(live.scene) == 5 and live.passes < 5  # coalesced: a blocked burst is applied in few passes
        assert "**frame 5 / 5**" in v.stats_md.content and "tracking failed on 1 frames" in v.stats_md.content
        assert "**live**: 5 frames" in v.live_md.content and "5.0 frames/s" in v.live_md.content
        assert not live.scene.frames[3].tracking_ok and live.scene.frames[4].tracking_ok
        assert all(f.num_points <= 300 for f in live.scene.frames)
        assert live.scene.frames[0].image is not None
        # a loop closure: the update carries the corrected trajectory of all frames so far
        shift = np.eye(4)
        shift[:3, 3] = [0.5, 0.0, 0.0]
        before = live.scene.frames[1].points.copy()
        corrected = shift @ recon.c2w[:6]
        live.push(Update(**{**ups[5].__dict__, "c2w": corrected[5], "trajectory": corrected}))
        for u in ups[6:]:
            live.push(u)
        assert live.wait_idle(20)
        assert len(live.scene) == n
        np.testing.assert_allclose(live.scene.c2w(upto=5), corrected, atol=1e-9)
        np.testing.assert_allclose(live.scene.frames[1].points, before + [0.5, 0.0, 0.0], atol=1e-5)
        assert sorted(v._frustums) == live.scene.frustum_positions(100)
        # the end of the run: final poses, the fused cloud, metrics
        from forward3d.types import PointCloud

        recon.points = PointCloud(np.asarray(recon.point_maps[0]).reshape(-1, 3)[:100])
        live.finish(recon, metrics={"ATE sim3 RMSE (m)": 0.0123}, seconds=2.0)
        assert live.wait_idle(20)
        np.testing.assert_allclose(live.scene.c2w(), recon.c2w, atol=1e-9)
        assert len(live.scene.cloud) == 100 and "0.0123" in v.metrics_md.content
        assert v.live_md.content.startswith("**done**: 8 frames in 2.0 s")
    assert live_status_text(3, 1.5, 1, behind=2) == "**live**: 3 frames, 1.5 frames/s, tracking failed on 1, view 2 frames behind"


def test_live_viewer_shows_a_run_that_streamed_nothing():
    recon = small_recon(n=4)
    with LiveViewer(LiveViewConfig(view=True, port=0)) as live:
        live.finish(recon)
        assert live.wait_idle(20)
        assert len(live.scene) == 4 and "**frame 4 / 4**" in live.viewer.stats_md.content


@pytest.mark.parametrize("name", ["rgbd", "slam3r-online", "spann3r"])
def test_streaming_backends_feed_the_live_view(name, tmp_path, one_thread):
    """Every streaming back-end through ``reconstruct(..., callback=live.push)`` (oracles for the
    networks): one frame in the view per frame of the run, the final result shown after it."""
    from forward3d.api import reconstruct
    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.io.sources import write_layout
    from forward3d.pipelines import get_backend
    from forward3d.pipelines.oracle import OracleSLAM3R, OracleSpann3R

    n = 8
    scene = SyntheticScene(SyntheticConfig(seed=1, num_frames=n, width=160, height=128))
    data = write_layout(scene.frames(), tmp_path / "redwood", "redwood")
    if name == "rgbd":
        pytest.importorskip("open3d")
        backend = get_backend("rgbd")
    elif name == "slam3r-online":
        from forward3d.pipelines.slam3r import SLAM3RBackend

        backend = SLAM3RBackend(models=OracleSLAM3R(scene, image_size=(64, 80)), online=True, keyframe_stride=1,
                                initial_winsize=3, online_warmup=4)
    else:
        from forward3d.pipelines.spann3r import Spann3RPipeline

        backend = Spann3RPipeline(models=OracleSpann3R(scene, image_size=(64, 80)), depth_warmup=2)
    with LiveViewer(LiveViewConfig(view=True, port=0, interval=0.05)) as live:
        run = reconstruct(data, backend, progress=False, callback=live.push)
        assert live.received == n
        live.finish(run.recon, seconds=run.seconds)
        assert live.wait_idle(20)
        assert len(live.scene) == n and live.scene.has_frame_points and live.scene.cloud is not None
        np.testing.assert_allclose(live.scene.c2w(), run.recon.c2w, atol=1e-9)
        assert f"**frame {n} / {n}**" in live.viewer.stats_md.content
        assert live.viewer.live_md.content.startswith(f"**done**: {n} frames")
        if run.recon.mesh is not None:
            assert "mesh" in live.viewer._static


def test_view_config_and_non_streaming_backend(tmp_path, capsys):
    with pytest.raises(ValueError, match="--view-port"):
        LiveViewConfig(port=70000)
    with pytest.raises(ValueError, match="--view-interval"):
        LiveViewConfig(interval=-1.0)
    from forward3d.cli.recon import _open_live_view

    class Offline:
        name = "x"

        class capabilities:  # noqa: N801
            streaming = False

    with pytest.raises(ValueError, match="does not stream"):
        _open_live_view(LiveViewConfig(view=True), Offline, "in")


# --------------------------------------------------------------------------------------------------
# forward3d recon --view in a real browser
# --------------------------------------------------------------------------------------------------

N = 24
# the README picture: the page during the run (rewritten only with FORWARD3D_UPDATE_DOCS=1)
DOC_SCREENSHOT = ROOT / "docs" / "images" / "live_view.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spann3r_inputs(shared_dir, tmp_path_factory):
    """A synthetic clip's frames and the fixture's small Spann3R network as a checkpoint + config.json."""
    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.models.spann3r import Spann3RConfig

    d = tmp_path_factory.mktemp("live")
    fx = shared_dir / "fixtures" / "spann3r"
    torch.save({"model": load_file(fx / "weights.safetensors")}, d / "spann3r.pth")
    (d / "small.json").write_text(json.dumps(Spann3RConfig.from_json(fx / "config.json", section="small").to_dict()))
    scene = SyntheticScene(SyntheticConfig(seed=2, num_frames=N, width=160, height=128, trajectory="orbit"))
    return [f.image for f in scene.frames()], d / "spann3r.pth", d / "small.json"


def _frame_counts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"frame \d+ / (\d+)", text)]


def test_recon_view_delivers_updates_to_the_browser(spann3r_inputs, browser, tmp_path):  # noqa: F811
    images, pth, cfg = spann3r_inputs
    # A live camera paces the run (4 frames/s: 6 s for the clip), and --view-wait starts it only once the page
    # is open: the page sees the run grow however slowly this machine loads it. (Reading the busy page's text
    # takes ~3 s with software WebGL, so a video file, decoded in a second, could end between two reads.)
    camera = LiveMJPEGServer(images, fps=4).start()
    port = _free_port()
    cmd = [sys.executable, "-m", "forward3d", "recon", camera.url, "--max-frames", str(N), "--backend", "spann3r",
           "--weights", str(pth), "--model-config", str(cfg), "--image-size", "64", "80", "--device", "cpu",
           "--out", str(tmp_path / "out"), "--no-previews", "--no-progress", "--view", "--view-port", str(port),
           "--view-interval", "0.2", "--view-wait", "60", "--view-max-points", "20000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        t_end = time.monotonic() + 60
        while not any("live view at" in x for x in lines):
            assert proc.poll() is None and time.monotonic() < t_end, "".join(lines)
            time.sleep(0.05)
        url = re.search(r"http://127\.0\.0\.1:\d+", next(x for x in lines if "live view at" in x)).group(0)
        assert url.endswith(f":{port}")
        browser.get(url)
        seen: list[int] = []
        shot = False
        t_end = time.monotonic() + 120
        while time.monotonic() < t_end:
            body = browser.find_element("tag name", "body").text
            seen += _frame_counts(body)
            if not shot and seen and N // 2 <= seen[-1] < N and "live:" in body:  # mid-run: the README's picture
                dismiss_notifications(browser)
                doc_screenshot(browser, tmp_path / "live_view.png", DOC_SCREENSHOT)
                shot = True
            if "done" in body and seen and seen[-1] == N:
                break
            time.sleep(0.1)
        counts = sorted(set(seen))
        assert counts and counts[-1] == N, (counts, "".join(lines))
        assert len(counts) >= 2 and counts[0] < N, f"the page never showed the run growing: {counts}"
        body = wait_for_text(browser, f"frame {N} / {N}", f"done: {N} frames", "frames/s", timeout=30)
        assert "points shown:" in body
        dismiss_notifications(browser)
        x0, y0, x1, y1 = element_box(browser, "canvas")

        def is_drawn(s: dict[str, float]) -> bool:
            return s["std"] > 10 and s["colors"] > 500 and s["dominant"] < 0.97

        _, stats = wait_for_view(browser, (slice(y0, y1), slice(x0, x0 + int(0.7 * (x1 - x0)))), is_drawn)
        assert is_drawn(stats), stats  # not blank
        t_end = time.monotonic() + 60
        while not any("serving the result" in x for x in lines):
            assert proc.poll() is None and time.monotonic() < t_end, "".join(lines)
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends the serving: exit 0, the outputs are there
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        camera.stop()
    reader.join(timeout=5)
    out = "".join(lines)
    assert "waiting up to 60 s for a browser" in out and "no browser opened" not in out and camera.connections == 1
    assert f"{N} frames with spann3r" in out and "viewer stopped" in out and "Traceback" not in out
    assert (tmp_path / "out" / "reconstruction.npz").is_file()
