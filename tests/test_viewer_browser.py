"""``forward3d view`` in a real headless Chromium: the page loads a reconstruction and draws it.

The screenshot of the first test is the README's picture (``docs/images/viewer.png``, rewritten with FORWARD3D_UPDATE_DOCS=1).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from browser import (  # noqa: F401
    browser,
    dismiss_notifications,
    doc_screenshot,
    element_box,
    wait_for_download,
    wait_for_view,
    wait_for_text,
)
from forward3d.data.synthetic import SyntheticScene
from forward3d.geometry.se3 import transform_points
from forward3d.io.export import export_reconstruction
from forward3d.io.trajectory import write_tum
from forward3d.types import Reconstruction
from forward3d.viz.load import load_scene
from forward3d.viz.viewer import Viewer, ViewerConfig, format_count

ROOT = Path(__file__).resolve().parents[1]
DOC_SCREENSHOT = ROOT / "docs" / "images" / "viewer.png"  # rewritten only with FORWARD3D_UPDATE_DOCS=1
N = 16


def drifting_recon(n: int = N, w: int = 128, h: int = 96) -> tuple[Reconstruction, np.ndarray]:
    """An oracle reconstruction of the synthetic room whose trajectory drifts away from the ground
    truth (1 degree and 1.5 cm per frame), its point maps moved with it, as a real back-end's would.
    Returns ``(recon, gt_c2w)``."""
    sc = SyntheticScene(num_frames=n, width=w, height=h, trajectory="handheld", speed=2.5, seed=1)
    frames = [sc.frame(i) for i in range(n)]
    gt = np.stack([f.c2w for f in frames])
    est = gt.copy()
    pms = []
    for i in range(n):
        a = np.radians(1.0 * i)
        drift = np.eye(4)
        drift[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        drift[:3, 3] = [0.015 * i, 0.0, 0.0]
        est[i] = drift @ gt[i]
        pm = sc.point_map(i)
        valid = np.abs(pm).sum(-1) > 0
        pm[valid] = transform_points(drift, pm[valid].astype(np.float64)).astype(np.float32)
        pms.append(pm)
    pm = np.stack(pms)
    conf = np.random.default_rng(0).uniform(1.0, 5.0, pm.shape[:3]).astype(np.float32)
    recon = Reconstruction(c2w=est, K=np.stack([f.K for f in frames]), image_size=(w, h),
                           frame_names=[f.name for f in frames], timestamps=np.array([f.timestamp for f in frames]),
                           point_maps=pm, confidences=conf, point_map_colors=np.stack([f.image for f in frames]),
                           metadata={"backend": "oracle", "config": {"note": "synthetic room, drifting"}})
    return recon, gt


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("recon")
    recon, gt = drifting_recon()
    export_reconstruction(recon, out, formats=("ply", "bundle"))
    write_tum(out / "gt.txt", recon.timestamps, gt)
    scene = load_scene(out, gt=out / "gt.txt")
    viewer = Viewer(scene, port=0, config=ViewerConfig(point_size=0.012))
    assert viewer.wait_idle(30)
    yield viewer
    viewer.stop()


def test_viewer_page_draws_the_reconstruction(served, browser, tmp_path):  # noqa: F811
    scene = served.scene
    browser.get(served.url)
    sel = scene.select("frames", min_confidence=float(served.min_conf.value))
    text = wait_for_text(browser, f"frame {N} / {N}", f"points shown: {format_count(sel.shown)} of "
                                                     f"{format_count(sel.eligible)}", timeout=60)
    assert sel.shown > 150_000 and "Timeline" in text and "ground truth" in text and "Download" in text
    dismiss_notifications(browser)
    box = element_box(browser, "canvas")
    assert box[2] - box[0] > 600 and box[3] - box[1] > 400
    time.sleep(2.0)  # let the point cloud and the thumbnails arrive and the renderer settle
    x0, y0, x1, y1 = box
    crop = (slice(y0, y1), slice(x0, x0 + int(0.7 * (x1 - x0))))  # the 3D view, left of the GUI panel

    def is_drawn(s: dict[str, float]) -> bool:
        return s["std"] > 20 and s["colors"] > 500 and s["dominant"] < 0.9

    img, stats = wait_for_view(browser, crop, is_drawn)
    assert is_drawn(stats), stats
    doc_screenshot(browser, tmp_path / "viewer.png", DOC_SCREENSHOT)
    drawn = img[crop]

    # hide everything: the view goes (nearly) blank, so what was there is our geometry
    toggles = (served.show_points, served.show_cameras, served.show_traj, served.show_gt)
    for t in toggles:
        t.value = False
    served._apply_visibility()
    assert served.wait_idle(20)

    def is_blank(s: dict[str, float]) -> bool:
        return s["std"] < 0.25 * stats["std"] and s["dominant"] > 0.95

    shot_blank, bstats = wait_for_view(browser, crop, is_blank)  # the nodes go one by one: wait for all
    for t in toggles:
        t.value = True
    served._apply_visibility()
    assert is_blank(bstats), (bstats, stats)
    blank = shot_blank[crop]
    changed = (np.abs(blank.astype(np.int32) - drawn.astype(np.int32)).sum(-1) > 30).mean()
    assert changed > 0.1, changed


def test_viewer_timeline_from_the_browser(served, browser):  # noqa: F811
    from selenium.webdriver.common.keys import Keys

    budget = 20_000  # software WebGL: fewer points keep the page responsive to key presses
    served.budget.value = budget
    assert served.wait_idle(20)
    browser.get(served.url)
    wait_for_text(browser, f"frame {N} / {N}", timeout=60)
    sliders = browser.find_elements("css selector", "[role=slider]")
    frame = [s for s in sliders if s.get_attribute("aria-valuemax") == str(N - 1)]
    assert len(frame) == 1, [s.get_attribute("aria-valuemax") for s in sliders]
    frame[0].click()  # focus; a click may also move it: go to the end first
    frame[0].send_keys(Keys.END)
    for _ in range(3):
        frame[0].send_keys(Keys.ARROW_LEFT)
    t = N - 4
    sel = served.scene.select("frames", upto=t, min_confidence=float(served.min_conf.value), budget=budget)
    wait_for_text(browser, f"frame {t + 1} / {N}", f"points shown: {format_count(sel.shown)}", timeout=30)
    assert served.current_frame() == t and abs(sel.shown - budget) < 1000
    assert sorted(served._frustums) == served.scene.frustum_positions(100, upto=t)


def test_viewer_download_button(served, browser):  # noqa: F811
    browser.get(served.url)
    wait_for_text(browser, "point cloud (PLY)", timeout=60)
    button = [b for b in browser.find_elements("css selector", "button") if b.text.strip() == "point cloud (PLY)"]
    assert len(button) == 1
    browser.execute_script("arguments[0].scrollIntoView()", button[0])
    button[0].click()
    got = wait_for_download(browser, "point_cloud.ply")
    assert got.read_bytes() == served.scene.downloads["point cloud (PLY)"].read_bytes()
