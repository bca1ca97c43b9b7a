"""``forward3d app`` (Gradio): the pieces (zip safety, session folders and expiry, port search, controls
from config dataclasses, inputs, the background job, downloads) and one real headless-browser run.

The browser test's screenshot is the README's picture (``docs/images/app.png``, rewritten with
FORWARD3D_UPDATE_DOCS=1).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from browser import browser  # noqa: F401

from forward3d.api import SourceConfig
from forward3d.app.controls import component_value, config_values, control_specs
from forward3d.app.jobs import ReconJob, VideoInput, make_downloads, prepare_input, update_points
from forward3d.app.server import AppConfig
from forward3d.app.session import SessionStore, find_free_port
from forward3d.io.archive import safe_extract_zip, zip_folder

ROOT = Path(__file__).resolve().parents[1]
DOC_SCREENSHOT = ROOT / "docs" / "images" / "app.png"  # rewritten only with FORWARD3D_UPDATE_DOCS=1
N_FRAMES = 8


@pytest.fixture(scope="module")
def rgbd_folder(tmp_path_factory) -> Path:
    """A short synthetic RGB-D sequence in the TUM layout (ground-truth poses included)."""
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.io.sources import write_layout

    sc = SyntheticScene(num_frames=N_FRAMES, width=96, height=72, seed=0)
    return write_layout((sc.frame(i) for i in range(N_FRAMES)), tmp_path_factory.mktemp("rgbd") / "scene", "tum")


@pytest.fixture(scope="module")
def rgbd_zip(rgbd_folder, tmp_path_factory) -> Path:
    return zip_folder(rgbd_folder, tmp_path_factory.mktemp("zip") / "scene.zip")


# --------------------------------------------------------------------------------------------------
# zip safety
# --------------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_extracts_into_the_folder_and_finds_the_dataset_root(rgbd_zip, rgbd_folder, tmp_path):
    root = safe_extract_zip(rgbd_zip, tmp_path / "x")
    assert root == (tmp_path / "x" / "scene").resolve()
    want = sorted(p.relative_to(rgbd_folder).as_posix() for p in rgbd_folder.rglob("*") if p.is_file())
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == want
    assert (root / "rgb.txt").read_bytes() == (rgbd_folder / "rgb.txt").read_bytes()
    flat = safe_extract_zip(_zip(tmp_path / "flat.zip", {"a.txt": b"1", "b/c.txt": b"2"}), tmp_path / "y")
    assert flat == (tmp_path / "y").resolve()  # several top-level entries: the folder itself


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "C:/evil.txt",
                                    "..\\evil.txt"])
def test_zip_refuses_members_that_escape(tmp_path, member):
    z = _zip(tmp_path / "bad.zip", {"ok.txt": b"fine", member: b"x"})
    with pytest.raises(ValueError, match=r"bad\.zip: unsafe member path"):
        safe_extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "out").rglob("*evil*"))


def test_zip_refuses_links_bombs_and_non_zips(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="link.zip: member 'link' is a symbolic link"):
        safe_extract_zip(z, tmp_path / "o1")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 5_000_000)  # 5 MB of zeros: a few kB compressed
    assert bomb.stat().st_size < 50_000
    with pytest.raises(ValueError, match="bomb.zip: 5 MB uncompressed, over the 1 MB limit"):
        safe_extract_zip(bomb, tmp_path / "o2", max_bytes=1_000_000)
    with pytest.raises(ValueError, match="many.zip: 3 entries, over the limit of 2"):
        safe_extract_zip(_zip(tmp_path / "many.zip", {"a": b"", "b": b"", "c": b""}), tmp_path / "o3", max_members=2)
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="fake.zip: not a zip archive"):
        safe_extract_zip(tmp_path / "fake.zip", tmp_path / "o4")


def test_zip_bound_holds_when_headers_lie(tmp_path):
    """A member whose header declares fewer bytes than it holds is stopped by the count while extracting."""
    z = _zip(tmp_path / "liar.zip", {"big.bin": b"\1" * 300_000})
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("big.bin")
    # patch the declared uncompressed size (local header offset 22, central directory offset 24) to 10 bytes
    import struct

    struct.pack_into("<I", data, info.header_offset + 22, 10)
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 10)
    z.write_bytes(bytes(data))
    with pytest.raises((ValueError, zipfile.BadZipFile)):
        safe_extract_zip(z, tmp_path / "o", max_bytes=100_000)
    written = sum(p.stat().st_size for p in (tmp_path / "o").rglob("*") if p.is_file())
    assert written <= 100_000 + (1 << 20)


# --------------------------------------------------------------------------------------------------
# sessions, expiry, ports
# --------------------------------------------------------------------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Stoppable:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def test_sessions_get_private_random_folders_that_expire(tmp_path):
    clock = _FakeClock()
    store = SessionStore(tmp_path / "root", ttl=60, clock=clock)
    a, b = store.get("session-a"), store.get("session-b")
    assert a.folder != b.folder and a.folder.parent == b.folder.parent == store.root
    assert len(a.folder.name) == 32 and "session" not in a.folder.name  # random, not the client's id
    assert stat.S_IMODE(a.folder.stat().st_mode) == 0o700
    assert store.get("session-a") is a
    run = a.new_run_folder()
    (run / "out.txt").write_text("x")
    viewer, old_viewer = _Stoppable(), _Stoppable()
    a.set_viewer(old_viewer)
    a.set_viewer(viewer)
    assert old_viewer.stopped == 1  # a new run's viewer replaces the previous one
    assert store.contains_path(run / "out.txt") and not store.contains_path(run / ".." / ".." / ".." / "x")
    clock.t += 45
    store.get("session-b")  # b is used again, a is not
    assert store.expire() == []
    clock.t += 30  # a idle 75 s > 60, b idle 30 s
    assert store.expire() == ["session-a"]
    assert not a.folder.exists() and viewer.stopped == 1 and b.folder.is_dir()
    assert "session-a" not in store and "session-b" in store
    store.remove("session-b")
    assert not b.folder.exists() and len(store) == 0
    store.close()
    assert store.root.is_dir()  # a root given by the user stays


def test_session_store_own_root_is_removed_and_janitor_expires(tmp_path):
    store = SessionStore(ttl=0.2)
    s = store.get("k")
    store.start_janitor(interval=0.05)
    t_end = time.monotonic() + 10
    while s.folder.exists() and time.monotonic() < t_end:
        time.sleep(0.05)
    assert not s.folder.exists()
    store.close()
    assert not store.root.exists()
    with pytest.raises(ValueError, match="--session-ttl"):
        SessionStore(tmp_path, ttl=0)


def test_port_search_skips_busy_ports():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        found = find_free_port("127.0.0.1", port)
        assert found > port
    assert find_free_port("127.0.0.1", 0) > 0
    with pytest.raises(ValueError, match="--port: expected 0..65535"):
        find_free_port("127.0.0.1", 70000)


def test_app_config_checks_and_cli(capsys):
    from forward3d.cli import main

    for bad, match in (({"port": 70000}, "--port"), ({"concurrency": 0}, "--concurrency"),
                       ({"session_ttl": -1}, "--session-ttl"), ({"max_upload_mb": 0}, "--max-upload-mb")):
        with pytest.raises(ValueError, match=match):
            AppConfig(**bad)
    assert main(["app", "--concurrency", "0"]) == 2
    assert "--concurrency: expected >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["app", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(AppConfig):  # the config is the CLI
        assert "--" + f.name.replace("_", "-") in out


# --------------------------------------------------------------------------------------------------
# controls from config dataclasses
# --------------------------------------------------------------------------------------------------


@dataclass
class _Demo:
    """A config.

    Attributes:
        size: voxel size in metres.
        steps: iterations.
        fast: go fast.
        method: how.
        K: fx fy cx cy.
        name: optional name.
    """

    size: float = 0.02
    steps: int = 3
    fast: bool = False
    method: Literal["a", "b"] = "a"
    K: tuple[float, float, float, float] | None = None
    name: str | None = None
    items: list[str] | None = None  # not representable: left out


def test_control_specs_follow_the_dataclass():
    specs = control_specs(_Demo)
    assert [(s.name, s.kind) for s in specs] == [("size", "float"), ("steps", "int"), ("fast", "bool"),
                                                  ("method", "choice"), ("K", "tuple"), ("name", "str")]
    by = {s.name: s for s in specs}
    assert by["size"].help == "voxel size in metres." and by["method"].choices == ("a", "b")
    assert by["K"].length == 4 and by["K"].optional and by["name"].optional and not by["steps"].optional
    defaults = [component_value(s) for s in specs]
    assert config_values(specs, defaults) == {}  # the page's initial values are the defaults
    got = config_values(specs, [0.05, 7.0, True, "b", "500 500 320 240", "x"])
    assert got == {"size": 0.05, "steps": 7, "fast": True, "method": "b", "K": (500.0, 500.0, 320.0, 240.0),
                   "name": "x"}
    _Demo(**got)
    with pytest.raises(ValueError, match="opt steps: expected an integer"):
        config_values(specs, [0.02, 2.5, False, "a", "", ""], "opt ")
    with pytest.raises(ValueError, match="K: expected 4 numbers"):
        config_values(specs, [0.02, 3, False, "a", "1 2", ""])
    with pytest.raises(ValueError, match="size: a value is required"):
        config_values(specs, [None, 3, False, "a", "", ""])
    with pytest.raises(TypeError):
        control_specs(_Demo())


def test_every_backend_and_the_source_get_their_controls():
    from forward3d.config import FIELD_META_KEY
    from forward3d.pipelines import available_backends, get_backend_class

    for cls in [SourceConfig] + [get_backend_class(n).config_cls for n in available_backends()]:
        specs = control_specs(cls)
        names = {s.name for s in specs}
        for f in dataclasses.fields(cls):
            shown = f.metadata.get(FIELD_META_KEY, {}).get("cli", True) and not dataclasses.is_dataclass(f.default_factory)
            if shown and f.name not in names:
                assert not isinstance(f.default, (bool, int, float, str)), (cls.__name__, f.name)
        assert config_values(specs, [component_value(s) for s in specs]) == {}, cls.__name__
        cls(**config_values(specs, [component_value(s) for s in specs]))
    rgbd = {s.name: s for s in control_specs(get_backend_class("rgbd").config_cls)}
    assert rgbd["voxel_size"].kind == "float" and rgbd["tracking"].kind == "choice" and rgbd["mesh"].kind == "bool"


# --------------------------------------------------------------------------------------------------
# inputs, the job, the downloads
# --------------------------------------------------------------------------------------------------


def test_prepare_input_checks_and_copies(tmp_path, rgbd_folder, rgbd_zip):
    with pytest.raises(ValueError, match="no input"):
        prepare_input(VideoInput(), tmp_path / "r0", 10**9)
    with pytest.raises(ValueError, match="several inputs given \\(video, url\\)"):
        prepare_input(VideoInput(video="a.mp4", url="http://x"), tmp_path / "r1", 10**9)
    (tmp_path / "clip.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"clip.txt: unsupported file type \.txt; expected a video"):
        prepare_input(VideoInput(video=str(tmp_path / "clip.txt")), tmp_path / "r2", 10**9)
    (tmp_path / "big.mp4").write_bytes(b"\0" * 3_000_000)
    with pytest.raises(ValueError, match=r"big.mp4: the upload is 3.0 MB, over the 1 MB limit"):
        prepare_input(VideoInput(video=str(tmp_path / "big.mp4")), tmp_path / "r3", 1_000_000)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        prepare_input(VideoInput(images=[str(tmp_path / "broken.png")]), tmp_path / "r4", 10**9)
    with pytest.raises(ValueError, match="stream URL 'ftp://cam': expected one starting with http"):
        prepare_input(VideoInput(url="ftp://cam"), tmp_path / "r5", 10**9)
    assert prepare_input(VideoInput(url=" http://cam:4747/video "), tmp_path / "r6", 10**9) == "http://cam:4747/video"
    rgb = sorted((rgbd_folder / "rgb").iterdir())[:3]
    folder = Path(prepare_input(VideoInput(images=[str(p) for p in reversed(rgb)]), tmp_path / "r7", 10**9))
    assert folder.parent == tmp_path / "r7" / "input"
    assert [p.name for p in sorted(folder.iterdir())] == ["00000.png", "00001.png", "00002.png"]
    assert (folder / "00000.png").read_bytes() == rgb[0].read_bytes()  # sorted by the uploaded names
    root = Path(prepare_input(VideoInput(zip=str(rgbd_zip)), tmp_path / "r8", 10**9))
    assert (root / "rgb.txt").is_file() and tmp_path / "r8" in root.parents


def test_job_runs_scores_and_offers_the_downloads(rgbd_folder, tmp_path, one_thread):
    from forward3d.io.colmap import read_colmap_text
    from forward3d.io.glb import read_glb
    from forward3d.io.ply import read_point_cloud
    from forward3d.io.trajectory import read_trajectory

    job = ReconJob(str(rgbd_folder), "oracle", {"point_stride": 4}, SourceConfig(), tmp_path / "run" / "out").start()
    snaps = list(job.progress_stream(interval=0.05))
    assert snaps[-1].done and job.error is None and snaps[-1].frames == N_FRAMES and snaps[-1].total == N_FRAMES
    run = job.result
    assert run.recon.trajectory_metrics.ate.rmse < 1e-6  # the oracle replays the ground truth
    d = make_downloads(run, tmp_path / "run" / "downloads")
    assert d.glb is None and d.model.name == "points.glb"  # no mesh: the Model3D shows the points
    assert len(read_glb(d.model).vertices) == len(read_point_cloud(d.ply).points) > 1000
    with zipfile.ZipFile(d.colmap) as zf:
        zf.extractall(tmp_path / "colmap")
    assert len(read_colmap_text(tmp_path / "colmap" / "colmap").c2w) == N_FRAMES
    assert len(read_trajectory(d.trajectory)[1]) == N_FRAMES
    with zipfile.ZipFile(d.archive) as zf:
        names = set(zf.namelist())
    assert {"forward3d-output/point_cloud.ply", "forward3d-output/reconstruction.npz",
            "forward3d-output/metrics.json"} <= names


def test_job_streams_updates_and_stops_with_a_partial_result(rgbd_folder, tmp_path, one_thread):
    pytest.importorskip("open3d")

    class StopAfterTwo:
        def __init__(self) -> None:
            self.pushed, self.finished = [], None

        def push(self, u) -> None:
            self.pushed.append(u)
            if len(self.pushed) == 2:
                job.stop()

        def finish(self, recon, metrics=None) -> None:
            self.finished = (recon, metrics)

    viewer = StopAfterTwo()
    job = ReconJob(str(rgbd_folder), "rgbd", {"voxel_size": 0.05}, SourceConfig(), tmp_path / "out", viewer=viewer)
    job.start()
    assert job.join(120) and job.error is None
    recon = job.result.recon
    assert recon.interrupted and 2 <= len(recon) < N_FRAMES  # stopped after the current frame
    assert len(viewer.pushed) == len(recon) and viewer.finished[0] is recon and viewer.finished[1]["partial"]
    pts, cols = update_points(viewer.pushed, per_frame=100)
    assert 0 < len(pts) <= 100 * len(recon) and cols.dtype == np.uint8 and np.isfinite(pts).all()


def test_job_reports_a_corrupt_video_and_a_refusing_stream(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42 this is not a video" * 10)
    job = ReconJob(str(tmp_path / "clip.mp4"), "oracle", None, SourceConfig(), tmp_path / "o1").start()
    assert job.join(60)
    assert job.result is None and job.error.startswith("clip.mp4: cannot open video") and "Traceback" not in job.error
    assert str(tmp_path) not in job.error  # no server paths in the message
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/video"
    job = ReconJob(url, "rgbd", None, SourceConfig(), tmp_path / "o2").start()
    assert job.join(60)
    assert job.result is None and job.error.startswith(url) and "Traceback" not in job.error


# --------------------------------------------------------------------------------------------------
# the app in a real headless browser
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    pytest.importorskip("gradio")
    from forward3d.app.server import launch_app

    server = launch_app(AppConfig(port=0, max_upload_mb=1.0, root=str(tmp_path_factory.mktemp("app-root"))),
                        block=False)
    yield server
    server.close()


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _click_text(driver, css: str, text: str) -> None:
    """Click the first ``css`` element whose visible text (its first line) is ``text``."""
    els = [e for e in driver.find_elements("css selector", css) if e.text.strip().split("\n")[0].strip() == text]
    assert els, f"no {css} with text {text!r}"
    els[0].click()


def test_app_runs_an_rgbd_zip_end_to_end_in_the_browser(app, browser, rgbd_zip, tmp_path):  # noqa: F811
    from forward3d.io.colmap import read_colmap_text
    from forward3d.io.glb import read_glb
    from forward3d.io.ply import read_point_cloud
    from forward3d.io.trajectory import read_trajectory
    from selenium.webdriver.common.keys import Keys

    from browser import dismiss_notifications, doc_screenshot, element_box, wait_for_element, wait_for_text, wait_for_view

    browser.get(app.url)
    wait_for_text(browser, "Video -> 3D", "Image -> 3D Gaussians", "back-end", timeout=60)
    _click_text(browser, "button", "RGB-D zip")
    wait_for_element(browser, "#zip-input input[type=file]", visible=False).send_keys(str(rgbd_zip))
    wait_for_text(browser, "KB", timeout=30)  # the upload is listed with its size
    _click_text(browser, "#mode label", "online")
    _click_text(browser, "button", "rgbd options")  # the option controls come from RGBDConfig
    voxel = wait_for_element(browser, "#opt-rgbd-voxel_size input")
    voxel.send_keys(Keys.CONTROL, "a")
    voxel.send_keys("0.05", Keys.TAB)
    _click_text(browser, "button", "rgbd options")  # folded again
    browser.find_element("css selector", "#run").click()
    text = wait_for_text(browser, "done:", "ATE RMSE", timeout=90)
    assert f"frames {N_FRAMES}" in text and "Traceback" not in text

    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('#downloads a')).map(a => a.href)")
    files = {}
    for href in links:
        status, data = _fetch(href)
        assert status == 200, href
        name = href.rsplit("/", 1)[-1]
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    assert set(files) == {"point_cloud.ply", "mesh.glb", "colmap.zip", "trajectory_tum.txt", "forward3d-output.zip"}
    assert len(read_point_cloud(files["point_cloud.ply"]).points) > 1000
    assert len(read_glb(files["mesh.glb"]).faces) > 1000
    with zipfile.ZipFile(files["colmap.zip"]) as zf:
        zf.extractall(tmp_path / "c")
    assert len(read_colmap_text(tmp_path / "c" / "colmap").c2w) == N_FRAMES
    assert len(read_trajectory(files["trajectory_tum.txt"])[1]) == N_FRAMES
    assert "forward3d-output/mesh.ply" in zipfile.ZipFile(files["forward3d-output.zip"]).namelist()
    assert all(app.store.contains_path(h.split("file=", 1)[1]) for h in links)  # served from the session root

    # the embedded viser view of the session is up
    viewer_src = browser.execute_script("const f = document.querySelector('#viewer iframe'); return f && f.src")
    assert viewer_src and _fetch(viewer_src)[0] == 200
    # nothing outside the session root is served
    base = app.url.rstrip("/")
    assert _fetch(f"{base}/gradio_api/file=/etc/passwd")[0] in (403, 404)
    assert _fetch(f"{base}/gradio_api/file={ROOT / 'pyproject.toml'}")[0] in (403, 404)
    assert _fetch(f"{base}/gradio_api/file={app.store.root}/../../etc/passwd")[0] in (403, 404)

    # the embedded viser view draws the result (gradio's Model3D needs babylon.js assets from its CDN,
    # which an offline headless browser cannot fetch: its GLB is checked above instead)
    browser.set_window_size(1280, 1300)
    browser.execute_script("window.scrollTo(0, 0)")
    x0, y0, x1, y1 = element_box(browser, "#viewer iframe")
    assert x1 - x0 > 300 and y1 - y0 > 300 and y1 <= 1300
    browser.switch_to.frame(browser.find_element("css selector", "#viewer iframe"))
    t_end = time.monotonic() + 10
    while not dismiss_notifications(browser) and time.monotonic() < t_end:  # viser's "software WebGL" notice
        time.sleep(0.5)
    browser.switch_to.default_content()

    def is_drawn(s: dict[str, float]) -> bool:
        return s["std"] > 15 and s["colors"] > 300 and s["dominant"] < 0.9

    _, stats = wait_for_view(browser, (slice(y0, y1), slice(x0, x1)), is_drawn)
    assert is_drawn(stats), stats
    doc_screenshot(browser, tmp_path / "app.png", DOC_SCREENSHOT)


def _toasts(driver, timeout: float = 10.0) -> list[str]:
    """The text of the page's toasts (gradio's error messages)."""
    t_end = time.monotonic() + timeout
    while True:
        texts = driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-testid=\"toast-body\"], .toast-body'))"
            ".map(e => e.textContent)") or []
        if texts or time.monotonic() > t_end:
            return [" ".join(t.split()) for t in texts]
        time.sleep(0.2)


@pytest.mark.slow  # ~20 s more in the browser; the same messages are checked without one above
def test_app_shows_one_clear_message_for_bad_input(app, browser, tmp_path):  # noqa: F811
    from browser import wait_for_element, wait_for_text

    browser.get(app.url)
    wait_for_text(browser, "Video -> 3D", timeout=60)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/video"
    _click_text(browser, "button", "Stream URL")
    wait_for_element(browser, "#url-input textarea, #url-input input").send_keys(url)
    browser.find_element("css selector", "#run").click()
    wait_for_text(browser, "Error", timeout=60)
    toasts = _toasts(browser)  # one message naming the URL and the problem
    assert any(url in t and "refused" in t.lower() for t in toasts), toasts
    assert "Traceback" not in browser.find_element("tag name", "body").text
    # an upload over --max-upload-mb (1 MB here) is refused with a message
    big = tmp_path / "big.zip"
    big.write_bytes(os.urandom(1_500_000))
    browser.get(app.url)
    wait_for_text(browser, "Video -> 3D", timeout=60)
    _click_text(browser, "button", "RGB-D zip")
    wait_for_element(browser, "#zip-input input[type=file]", visible=False).send_keys(str(big))
    wait_for_text(browser, "Error", timeout=30)
    toasts = _toasts(browser)
    assert any("1 MB" in t or "1mb" in t.lower() or "size" in t.lower() for t in toasts), toasts


def test_app_image_to_gaussians_in_the_browser(app, browser, tmp_path):  # noqa: F811
    from PIL import Image

    from browser import wait_for_element, wait_for_text
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.io.gaussians import read_gaussians_ply

    f = SyntheticScene(num_frames=1, width=96, height=72, seed=2).frame(0)
    Image.fromarray(f.image).save(tmp_path / "photo.png")
    Image.fromarray((f.depth * 1000).astype(np.uint16)).save(tmp_path / "depth.png")  # millimetres
    browser.get(app.url)
    wait_for_text(browser, "Image -> 3D Gaussians", timeout=60)
    _click_text(browser, "button", "Image -> 3D Gaussians")
    wait_for_element(browser, "#photo input[type=file]", visible=False).send_keys(str(tmp_path / "photo.png"))
    wait_for_element(browser, "#depth-input input[type=file]", visible=False).send_keys(str(tmp_path / "depth.png"))
    wait_for_text(browser, "KB", timeout=30)  # the depth upload is listed with its size
    time.sleep(1.0)  # the photo's upload finishes too
    browser.find_element("css selector", "#splat-run").click()
    text = wait_for_text(browser, "unproject", "Gaussians (96x72)", timeout=90)
    assert "Traceback" not in text
    links = browser.execute_script("return Array.from(document.querySelectorAll('#splat-downloads a')).map(a => a.href)")
    names = {h.rsplit("/", 1)[-1]: h for h in links}
    assert set(names) == {"scene.ply", "scene.splat", "depth.png"}
    status, data = _fetch(names["scene.ply"])
    assert status == 200
    (tmp_path / "scene.ply").write_bytes(data)
    g = read_gaussians_ply(tmp_path / "scene.ply")
    assert len(g) == 96 * 72  # the weight-free path: one Gaussian per pixel
    renders = browser.execute_script("return document.querySelectorAll('#renders img').length")
    assert renders >= 6  # the six preview views


@pytest.mark.slow  # starts a second app process (~25 s, mostly importing gradio)
def test_cli_takes_the_next_port_and_exits_cleanly_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        p = subprocess.Popen([sys.executable, "-m", "forward3d", "app", "--port", str(port), "--root",
                              str(tmp_path / "root")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            lines = []
            for line in p.stdout:
                lines.append(line)
                if "open http" in line:
                    break
            text = "".join(lines)
            assert f"port {port} is busy, using" in text, text
            url = text.split("open ", 1)[1].split()[0]
            assert url.startswith("http://127.0.0.1:") and _fetch(url)[0] == 200
            assert any((tmp_path / "root").iterdir())  # gradio's cache lives in the root
            p.send_signal(signal.SIGINT)
            out, _ = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 0 and "forward3d app: stopped" in out and "Traceback" not in out, out
    assert not any((tmp_path / "root").iterdir())  # the session folders are removed, the given root stays
