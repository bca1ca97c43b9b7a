"""Benchmark the viewer's point selection (budget, confidence, timeline) and the stream proxy under load.

select: a scene of F frames x P points (world points, colours, confidences); time of
``SceneModel.select`` for the whole sequence with a 2 M point budget and a confidence threshold (what
every slider move of the viewer costs before sending), for 1 M, 5 M and 20 M points; also the time to
build the scene (``add_frame``) and the process peak RSS.

proxy: ``forward3d stream-proxy`` as a subprocess fed by a 25 fps 160x120 MJPEG camera (tests/mjpeg_server.py)
with N clients reading for D seconds: frames per client (min / mean), upstream connections, proxy RSS
after the warm-up and at the end, proxy CPU time.

live: ``forward3d recon`` (:func:`forward3d.api.reconstruct`, in-process, no output folder) on a synthetic
input with the live view (``--view``: a :class:`~forward3d.viz.live.LiveViewer` as the callback) vs without:
wall time of the run (median of ``--repeats``, runs alternated), the slowdown in %, the CPU time of this
process (the run plus the view's threads; less sensitive than the wall time to what else runs on the
machine) and its overhead in %, the updates the view received and how many refreshes it made; ``view+browser`` also has a headless Chromium (SwiftShader, i.e.
software WebGL on the same 2 CPU cores) showing the page. Back-ends: ``spann3r`` with the fixture's small
network (80 x 64, ~5 frames/s on one thread) on a 160 x 128 video, and ``rgbd`` (odometry + TSDF) on a
320 x 240 Redwood layout. Target: <= 10 % slower with the view.

    .venv/bin/python benchmarks/viewer.py                 # all; writes benchmarks/results/viewer.json
    .venv/bin/python benchmarks/viewer.py --only select --points 1e6 2e7
    .venv/bin/python benchmarks/viewer.py --only live --repeats 3
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _util import RESULTS, machine_info, peak_rss_mib, print_table, write_json  # noqa: E402


def bench_select(total_points: int, frames: int = 200, budget: int = 2_000_000) -> dict:
    from forward3d.viz.scene import SceneModel

    rng = np.random.default_rng(0)
    per = total_points // frames
    pts = rng.normal(size=(per, 3)).astype(np.float32)
    cols = rng.integers(0, 255, (per, 3), dtype=np.uint8)
    conf = rng.uniform(1, 5, per).astype(np.float32)
    scene = SceneModel()
    t0 = time.perf_counter()
    for i in range(frames):
        scene.add_frame(i, str(i), np.eye(4), np.eye(3), (4, 4), points=pts + i, colors=cols, confidence=conf)
    t_build = time.perf_counter() - t0
    times = {}
    for label, kw in (("all", {}), ("conf>=2", {"min_confidence": 2.0}), ("upto half", {"upto": frames // 2})):
        scene.select("frames", budget=budget, **kw)  # warm-up
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            sel = scene.select("frames", budget=budget, **kw)
            ts.append(time.perf_counter() - t0)
        times[label] = (float(np.median(ts)), sel.shown)
    return {"points": total_points, "frames": frames, "budget": budget, "build_s": t_build,
            "select_all_s": times["all"][0], "shown_all": times["all"][1],
            "select_conf_s": times["conf>=2"][0], "select_upto_half_s": times["upto half"][0],
            "peak_rss_mib": peak_rss_mib()}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def bench_proxy(n_clients: int, duration: float) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from mjpeg_server import LiveMJPEGServer

    rng = np.random.default_rng(0)
    cam = LiveMJPEGServer([rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(8)], fps=25).start()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "forward3d", "stream-proxy", cam.url, "--port", "0",
                             "--max-clients", str(n_clients + 4)], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    port = int(line.split("-> http://127.0.0.1:", 1)[1].split("/", 1)[0])
    counts = [0] * n_clients
    delim = b"--forward3dframe"

    def client(k: int) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /video HTTP/1.0\r\n\r\n")
        t_end = time.monotonic() + duration
        tail = b""
        while time.monotonic() < t_end:
            d = s.recv(1 << 16)
            if not d:
                break
            buf = tail + d
            counts[k] += buf.count(delim)
            tail = buf[-(len(delim) - 1):]
        s.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n_clients)]
    cpu0 = _cpu_s(proc.pid)
    for t in threads:
        t.start()
    time.sleep(min(2.0, duration / 4))
    rss_warm = _rss_kib(proc.pid)
    for t in threads:
        t.join(duration + 10)
    rss_end = _rss_kib(proc.pid)
    cpu = _cpu_s(proc.pid) - cpu0
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    cam.stop()
    return {"clients": n_clients, "duration_s": duration, "upstream_frames": cam.frames_sent,
            "upstream_connections": cam.connections, "frames_min": min(counts), "frames_mean": float(np.mean(counts)),
            "rss_warm_mib": rss_warm / 1024, "rss_end_mib": rss_end / 1024, "proxy_cpu_s": cpu}


def _live_inputs(tmp: Path, frames: int) -> dict[str, tuple[Path, object]]:
    """``backend name -> (input path, back-end factory)`` for the live part."""
    import json

    import torch
    from safetensors.torch import load_file

    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.io.sources import write_layout
    from forward3d.models.spann3r import Spann3RConfig
    from forward3d.pipelines import get_backend

    fx = ROOT.parent / "shared" / "fixtures" / "spann3r"
    torch.save({"model": load_file(fx / "weights.safetensors")}, tmp / "spann3r.pth")
    (tmp / "small.json").write_text(json.dumps(Spann3RConfig.from_json(fx / "config.json", section="small").to_dict()))
    video_scene = SyntheticScene(SyntheticConfig(seed=2, num_frames=frames, width=160, height=128, trajectory="orbit"))
    video = write_layout((f.with_(depth=None, c2w=None) for f in video_scene.frames()), tmp / "clip.mp4", "video",
                         codec="mpeg4")
    redwood = write_layout(SyntheticScene(SyntheticConfig(seed=2, num_frames=frames, width=320, height=240)).frames(),
                           tmp / "redwood", "redwood")
    return {
        "spann3r": (video, lambda: get_backend("spann3r", weights=str(tmp / "spann3r.pth"), device="cpu",
                                               model_config=str(tmp / "small.json"), image_size=(64, 80))),
        "rgbd": (redwood, lambda: get_backend("rgbd")),
    }


def _headless_chromium():
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import CHROMIUM_FLAGS, find_chromium
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = find_chromium()
    opts = Options()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


def bench_live(frames: int, repeats: int, browser: bool) -> list[dict]:
    import tempfile

    import torch

    from forward3d.api import reconstruct
    from forward3d.viz.live import LiveViewConfig, LiveViewer

    torch.set_num_threads(1)
    modes = ["off", "view"] + (["view+browser"] if browser else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="forward3d-bench-live-") as tmp:
        inputs = _live_inputs(Path(tmp), frames)
        driver = _headless_chromium() if browser else None
        try:
            for name, (path, make) in inputs.items():
                reconstruct(path, make(), progress=False)  # warm-up (file cache, first-use imports)
                times: dict[str, list[float]] = {m: [] for m in modes}
                cpu: dict[str, list[float]] = {m: [] for m in modes}
                extra: dict[str, dict] = {}
                for _ in range(repeats):
                    for mode in modes:
                        live = None
                        if mode != "off":
                            live = LiveViewer(LiveViewConfig(view=True, port=0))
                            if driver is not None and mode == "view+browser":
                                driver.get(live.url)
                                time.sleep(2.0)  # the page is up and connected before the run starts
                        t0, c0 = time.perf_counter(), time.process_time()
                        run = reconstruct(path, make(), progress=False, callback=None if live is None else live.push)
                        times[mode].append(time.perf_counter() - t0)
                        cpu[mode].append(time.process_time() - c0)  # this process: the run + the view's threads
                        if live is not None:
                            live.finish(run.recon)
                            extra[mode] = {"updates": live.received, "refreshes": live.passes,
                                           "push_ms_per_update": 1e3 * live.push_seconds / max(live.received, 1)}
                            live.stop()
                base, base_cpu = float(np.median(times["off"])), float(np.median(cpu["off"]))
                for mode in modes:
                    t, c = float(np.median(times[mode])), float(np.median(cpu[mode]))
                    rows.append({"backend": name, "frames": frames, "mode": mode, "seconds": t, "runs": len(times[mode]),
                                 "slowdown_pct": 100.0 * (t / base - 1.0), "cpu_s": c,
                                 "cpu_overhead_pct": 100.0 * (c / base_cpu - 1.0), **extra.get(mode, {}),
                                 "loadavg": os.getloadavg()[0]})
                    print(rows[-1], flush=True)
        finally:
            if driver is not None:
                driver.quit()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["select", "proxy", "live"], default=None)
    ap.add_argument("--points", type=float, nargs="+", default=[1e6, 5e6, 2e7])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--frames", type=int, default=40, help="live: frames of the synthetic input")
    ap.add_argument("--repeats", type=int, default=3, help="live: runs per mode (median)")
    ap.add_argument("--no-browser", action="store_true", help="live: skip the headless-Chromium mode")
    args = ap.parse_args()
    out: dict = {"machine": machine_info()}
    if args.only in (None, "select"):
        rows = [bench_select(int(n)) for n in args.points]
        print_table(rows, ["points", "frames", "budget", "build_s", "select_all_s", "shown_all", "select_conf_s",
                           "select_upto_half_s", "peak_rss_mib"])
        out["select"] = rows
    if args.only in (None, "proxy"):
        rows = [bench_proxy(n, args.duration) for n in args.clients]
        print_table(rows, ["clients", "duration_s", "upstream_frames", "upstream_connections", "frames_min",
                           "frames_mean", "rss_warm_mib", "rss_end_mib", "proxy_cpu_s"])
        out["proxy"] = rows
    if args.only in (None, "live"):
        rows = bench_live(args.frames, args.repeats, not args.no_browser)
        print_table(rows, ["backend", "frames", "mode", "seconds", "slowdown_pct", "cpu_s", "cpu_overhead_pct", "updates",
                           "refreshes", "push_ms_per_update", "loadavg"])
        out["live"] = rows
    path = RESULTS / "viewer.json"
    if args.only is not None and path.is_file():  # one part re-run: keep the other parts' numbers
        import json

        out = {**json.loads(path.read_text()), **out}
    print("wrote", write_json("viewer.json", out))


if __name__ == "__main__":
    main()
