"""Headless-browser test harness: the system Chromium (Debian ``chromium`` + ``chromium-driver``,
installed by ``scripts/setup.sh`` for the dev extra) driven by selenium.

Use the ``browser`` fixture (import it into the test module: ``from browser import browser``); it
FAILS (does not skip) when Chromium or its driver is missing, naming the fix. WebGL runs on
SwiftShader (software), so pages that draw with three.js (viser) render without a GPU.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

__all__ = ["CHROMIUM_FLAGS", "find_chromium", "browser", "wait_for_text", "screenshot", "element_box",
           "content_stats", "wait_for_view", "wait_for_element", "doc_screenshot", "dismiss_notifications", "wait_for_download"]

# flags that work in containers without a GPU, a sandbox or a network (and never phone home)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    "--window-size=1280,800", "--hide-scrollbars", "--mute-audio",
)
_INSTALL_HINT = ("install it with 'apt-get install -y chromium chromium-driver' (scripts/setup.sh does it for the "
                 "dev extra) and 'pip install selenium'")


def find_chromium() -> tuple[str, str]:
    """``(chromium binary, chromedriver)`` paths; RuntimeError naming the fix when either is missing."""
    binary = os.environ.get("FORWARD3D_CHROMIUM") or next(
        (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p),
        None)
    driver = os.environ.get("FORWARD3D_CHROMEDRIVER") or shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if binary is None or driver is None:
        raise RuntimeError(f"headless browser tests need Chromium and chromedriver (found {binary}, {driver}): "
                           + _INSTALL_HINT)
    return binary, driver


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (selenium WebDriver) with a new empty profile, closed after the module.
    Downloads land in ``driver.download_dir`` (a new empty folder)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("headless browser tests need selenium: pip install forward3d[dev]")
    try:
        binary, driver_path = find_chromium()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    profile = tempfile.mkdtemp(prefix="forward3d-chromium-")
    downloads = tempfile.mkdtemp(prefix="forward3d-downloads-")
    opts = Options()
    opts.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": downloads,
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    driver.download_dir = Path(downloads)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)


def wait_for_text(driver, *texts: str, timeout: float = 30.0) -> str:
    """Wait until the page's visible text contains every one of ``texts``; return that text
    (AssertionError with the text found after ``timeout`` seconds)."""
    body = ""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            body = driver.find_element("tag name", "body").text
        except Exception:  # the page is (re)loading
            body = ""
        if all(t in body for t in texts):
            return body
        time.sleep(0.2)
    raise AssertionError(f"page text never contained {texts!r} within {timeout} s; found:\n{body[:2000]}")


def screenshot(driver, path: str | os.PathLike | None = None) -> np.ndarray:
    """The viewport as ``[H, W, 3]`` uint8 RGB (CSS pixels); also written to ``path`` (PNG) if given."""
    from PIL import Image

    png = driver.get_screenshot_as_png()
    if path is not None:
        from forward3d.io.atomic import atomic_write

        with atomic_write(path, "wb") as f:
            f.write(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def element_box(driver, css: str) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` viewport box of the largest element matching ``css`` (e.g. ``"canvas"``)."""
    boxes = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => {"
        "const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; });", css)
    if not boxes:
        raise AssertionError(f"no element matches {css!r}")
    x0, y0, x1, y1 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return int(x0), int(y0), int(x1), int(y1)


def content_stats(image: np.ndarray) -> dict[str, float]:
    """How much an RGB picture shows: ``std`` of the grey levels, ``colors`` (distinct colours at 5-bit
    precision), ``dominant`` (fraction of pixels of the most common colour: ~1 for a blank picture)."""
    img = np.asarray(image)[..., :3]
    q = (img >> 3).astype(np.int32)
    codes = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    counts = np.bincount(codes.ravel(), minlength=1 << 15)
    return {"std": float(img.mean(-1).std()), "colors": int((counts > 0).sum()),
            "dominant": float(counts.max() / max(codes.size, 1))}


def doc_screenshot(driver, path: Path, doc: Path) -> Path:
    """Save a screenshot of the page to ``path`` (checked not to be empty) and, with
    ``FORWARD3D_UPDATE_DOCS=1``, copy it to ``doc`` (a README picture); returns ``path``."""
    screenshot(driver, path)
    assert path.stat().st_size > 10_000, f"{path}: an empty screenshot ({path.stat().st_size} bytes)"
    if os.environ.get("FORWARD3D_UPDATE_DOCS") == "1":
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, doc)
    return path


def wait_for_element(driver, css: str, timeout: float = 30.0, visible: bool = True):
    """The first element matching ``css`` once the page has it (a click that opens an accordion or a tab
    renders its content a moment later). ``visible=False`` accepts hidden elements too (file inputs,
    which pages hide behind a styled drop zone and which selenium fills all the same)."""
    from selenium.common.exceptions import StaleElementReferenceException

    t_end = time.monotonic() + timeout
    while True:
        try:  # the page may re-render between finding an element and asking whether it shows
            els = [e for e in driver.find_elements("css selector", css) if not visible or e.is_displayed()]
        except StaleElementReferenceException:
            els = []
        if els:
            return els[0]
        if time.monotonic() > t_end:
            raise AssertionError(f"no {'visible ' if visible else ''}element matches {css!r} after {timeout} s")
        time.sleep(0.2)


def wait_for_view(driver, region: tuple[slice, slice], ok, timeout: float = 30.0) -> tuple[np.ndarray, dict]:
    """Screenshots until ``ok(content_stats(shot[region]))`` holds or ``timeout`` s pass; returns the last
    full shot and its region's stats, for the caller to assert ``ok`` on.

    Software WebGL on a busy machine draws (and clears) a scene over several frames, so poll for the whole
    criterion the test asserts: a shot taken as soon as one part of it holds can be a half-drawn frame."""
    t_end = time.monotonic() + timeout
    while True:
        img = screenshot(driver)
        stats = content_stats(img[region])
        if ok(stats) or time.monotonic() > t_end:
            return img, stats
        time.sleep(0.5)


def wait_for_download(driver, name: str, timeout: float = 30.0) -> Path:
    """The file ``name`` once the browser has finished downloading it into ``driver.download_dir``."""
    path = Path(driver.download_dir) / name
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if path.is_file() and not path.with_name(name + ".crdownload").exists():
            return path
        time.sleep(0.2)
    raise AssertionError(f"{name} was not downloaded within {timeout} s; found {sorted(os.listdir(driver.download_dir))}")


def dismiss_notifications(driver) -> int:
    """Close the toasts a page shows (viser's "software WebGL" notice); returns how many."""
    return int(driver.execute_script(
        "const b = Array.from(document.querySelectorAll('button')).filter(e => "
        "e.className.includes('Notification') && e.className.includes('close') || "
        "(e.closest('[class*=Notification]') && e.getAttribute('aria-label') !== null));"
        "b.forEach(e => e.click()); return b.length;") or 0)
