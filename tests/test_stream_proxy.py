"""``forward3d stream-proxy``: one upstream MJPEG camera re-served to many clients."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from forward3d.viz.stream_proxy import BOUNDARY, FrameHub, ProxyConfig, StreamProxy, read_mjpeg_parts
from mjpeg_server import LiveMJPEGServer, jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]
_DELIM = f"--{BOUNDARY}".encode()


def _images(n: int = 8, w: int = 160, h: int = 120) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


class Client(threading.Thread):
    """Reads a proxy stream over a raw socket, counting frames and keeping their arrival times.
    ``rate``: read at most this many bytes per second (a slow client, small receive buffer)."""

    def __init__(self, port: int, duration: float, rate: float | None = None, path: str = "/video") -> None:
        super().__init__(daemon=True)
        self.port, self.duration, self.rate, self.path = port, duration, rate, path
        self.times: list[float] = []
        self.status = b""
        self.error: str | None = None

    def run(self) -> None:
        try:
            s = socket.socket()
            if self.rate:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.settimeout(10)
            s.connect(("127.0.0.1", self.port))
            s.sendall(f"GET {self.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            t_start = time.monotonic()
            t_end = t_start + self.duration
            tail = b""
            got = 0
            while time.monotonic() < t_end:
                if self.rate:
                    time.sleep(max(0.0, t_start + got / self.rate - time.monotonic()))
                s.settimeout(max(0.05, min(10.0, t_end - time.monotonic())))
                try:
                    data = s.recv(4096 if self.rate else 1 << 16)
                except socket.timeout:
                    continue
                got += len(data)
                if not data:
                    break
                if not self.status:
                    self.status = data.split(b"\r\n", 1)[0]
                buf = tail + data
                self.times += [time.monotonic()] * buf.count(_DELIM)
                tail = buf[-(len(_DELIM) - 1):]
            s.close()
        except OSError as exc:
            self.error = repr(exc)

    @property
    def frames(self) -> int:
        return len(self.times)

    def frames_between(self, t0: float, t1: float) -> int:
        return sum(t0 <= t < t1 for t in self.times)


def _status(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).read())


# --------------------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_length", [True, False])
@pytest.mark.parametrize("boundary, delim", [("frame", b"--frame"), ("--frame", b"--frame"), ("frame", b"frame")])
def test_read_mjpeg_parts(with_length, boundary, delim):
    jpgs = [jpeg_bytes(im) for im in _images(3, 16, 8)]
    data = b"preamble\r\n"
    starts = []
    for j in jpgs:
        data += delim + b"\r\nContent-Type: image/jpeg\r\n"
        if with_length:
            data += b"Content-Length: %d\r\n" % len(j)
        data += b"\r\n"
        starts.append(len(data))
        data += j + b"\r\n"
    data += delim + b"--\r\n"
    assert list(read_mjpeg_parts(io.BytesIO(data), boundary, 1 << 20)) == jpgs
    # a stream cut in the middle of a frame yields the complete frames only
    cut = data[: starts[2] + 50]
    assert list(read_mjpeg_parts(io.BytesIO(cut), boundary, 1 << 20)) == jpgs[:2]
    with pytest.raises(ValueError, match="exceeds"):
        list(read_mjpeg_parts(io.BytesIO(data), boundary, 100))


def test_frame_hub_keeps_only_the_latest():
    hub = FrameHub()
    assert hub.wait_newer(0, timeout=0.01) is None
    for i in range(100):
        hub.publish(b"%d" % i)
    assert hub.wait_newer(0, timeout=0.01) == (100, b"99")  # a slow reader skips to the newest
    assert hub.wait_newer(100, timeout=0.01) is None


def test_bad_config_and_source():
    with pytest.raises(ValueError, match="http"):
        StreamProxy("rtsp://camera/stream")
    with pytest.raises(ValueError, match="http"):
        StreamProxy("not a url")
    for kwargs in (dict(port=70000), dict(max_clients=0), dict(read_timeout=0), dict(backoff_min=2, backoff_max=1)):
        with pytest.raises(ValueError, match="ProxyConfig"):
            ProxyConfig(**kwargs)


# --------------------------------------------------------------------------------------------------
# in-process behaviour
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
def test_many_clients_one_upstream_snapshot_status(content_length):
    with LiveMJPEGServer(_images(), fps=30, content_length=content_length) as cam, \
            StreamProxy(cam.url, ProxyConfig(port=0)) as proxy:
        clients = [Client(proxy.port, 2.5) for _ in range(6)]
        for c in clients:
            c.start()
        snap = urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/snapshot.jpg", timeout=10)
        assert snap.headers["Content-Type"] == "image/jpeg"
        body = snap.read()
        assert body[:2] == b"\xff\xd8" and body in cam.jpgs
        page = urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/", timeout=10).read()
        assert b"/video" in page and b"/snapshot.jpg" in page
        for c in clients:
            c.join(10)
        st = _status(proxy.port)
        assert all(c.status.startswith(b"HTTP/1.0 200") and c.frames > 30 for c in clients), \
            [(c.status, c.frames, c.error) for c in clients]
        assert cam.connections == 1 and cam.max_concurrent == 1 and cam.refused == 0
        assert st["upstream_connections"] == 1 and st["frames_in"] >= 60
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/nope", timeout=10)
        assert e.value.code == 404


def test_upstream_drop_reconnects_and_clients_resume():
    cam = LiveMJPEGServer(_images(), fps=30).start()
    proxy = StreamProxy(cam.url, ProxyConfig(port=0, backoff_min=0.1, backoff_max=0.5)).start()
    try:
        clients = [Client(proxy.port, 6.0) for _ in range(4)]
        for c in clients:
            c.start()
        time.sleep(1.5)
        cam.stop()  # the phone goes away
        t_down = time.monotonic()
        t_end = time.monotonic() + 10  # the proxy notices the drop on its next read: poll, do not guess a delay
        while _status(proxy.port)["upstream_connected"] and time.monotonic() < t_end:
            time.sleep(0.1)
        assert not _status(proxy.port)["upstream_connected"]
        cam.start()  # and comes back on the same port
        t_up = time.monotonic()
        for c in clients:
            c.join(15)
        for c in clients:
            assert c.frames_between(0, t_down) > 10, "no frames before the drop"
            assert c.frames_between(t_up + 0.5, t_up + 10) > 10, "the client did not resume"
        st = proxy.stats()
        assert st["upstream_connections"] == 2 and cam.connections == 2 and cam.max_concurrent == 1
    finally:
        proxy.stop()
        cam.stop()


def test_slow_client_skips_frames_and_does_not_slow_the_others():
    with LiveMJPEGServer(_images(w=320, h=240), fps=30) as cam, \
            StreamProxy(cam.url, ProxyConfig(port=0, client_timeout=30)) as proxy:
        frame_bytes = len(cam.jpgs[0])
        fast = [Client(proxy.port, 4.0) for _ in range(3)]
        slow = Client(proxy.port, 4.0, rate=3 * frame_bytes)  # can take ~3 of the 30 frames a second
        for c in (*fast, slow):
            c.start()
        for c in (*fast, slow):
            c.join(20)
        st = proxy.stats()
    # the fast clients got (nearly) every upstream frame; the slow one far fewer, and the proxy
    # skipped frames for it instead of queueing them
    assert all(c.frames > 0.8 * 30 * 4.0 for c in fast), [c.frames for c in fast]
    assert 0 < slow.frames < 0.5 * min(c.frames for c in fast), (slow.frames, [c.frames for c in fast])
    assert st["frames_skipped"] > 30, st


def test_max_clients_and_snapshot_without_upstream():
    # no camera at all: clients connect, the snapshot says why there is no picture
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with StreamProxy(f"http://127.0.0.1:{dead}/video",
                     ProxyConfig(port=0, max_clients=1, read_timeout=0.5, backoff_min=0.1, backoff_max=0.2)) as proxy:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/snapshot.jpg", timeout=10)
        assert e.value.code == 503 and b"no frame" in e.value.read()
        first = Client(proxy.port, 1.5)
        first.start()
        time.sleep(0.3)
        second = Client(proxy.port, 0.5)
        second.start()
        second.join(5)
        first.join(5)
        assert first.status.startswith(b"HTTP/1.0 200") and second.status.startswith(b"HTTP/1.0 503")
        st = proxy.stats()
        assert st["clients_refused"] == 1 and st["last_error"] == "connection refused"


# --------------------------------------------------------------------------------------------------
# the command, under load
# --------------------------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _load_test(n_clients: int, duration: float) -> None:
    """The CLI proxy (a real process) under ``n_clients`` for ``duration`` s; the camera is switched
    off and on again halfway. Checks: every client receives frames before and after, ONE upstream
    connection at a time (the camera refuses a second), memory flat."""
    cam = LiveMJPEGServer(_images(), fps=25).start()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "forward3d", "stream-proxy", cam.url, "--port", "0",
                             "--max-clients", str(n_clients + 4), "--backoff-max", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "-> http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split("-> http://127.0.0.1:", 1)[1].split("/", 1)[0])
        clients = [Client(port, duration) for _ in range(n_clients)]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        rss = []
        down = up = None
        while time.monotonic() - t0 < duration:
            time.sleep(0.5)
            rss.append((time.monotonic() - t0, _rss_kib(proc.pid)))
            if down is None and time.monotonic() - t0 > duration * 0.4:
                cam.stop()
                down = time.monotonic()
            elif down is not None and up is None and time.monotonic() - down > 1.0:
                cam.start()
                up = time.monotonic()
        for c in clients:
            c.join(duration + 10)
        st = _status(port)
        assert all(c.error is None for c in clients), [c.error for c in clients if c.error]
        assert all(c.frames_between(0, down) > 10 for c in clients), [c.frames_between(0, down) for c in clients]
        assert all(c.frames_between(up + 1.0, up + duration) > 5 for c in clients), \
            [c.frames_between(up + 1.0, up + duration) for c in clients]
        assert cam.max_concurrent == 1 and cam.refused == 0 and cam.connections == 2
        assert st["upstream_connections"] == 2 and st["clients_total"] == n_clients
        # memory flat: after the warm-up, RSS grows by less than 16 MiB
        warm = [kb for t, kb in rss if t > 2.0]
        assert max(warm) - warm[0] < 16 * 1024, rss
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err and "stopped" in out, err
    finally:
        if proc.poll() is None:
            proc.kill()
        cam.stop()


def test_load_short():
    _load_test(n_clients=8, duration=6.0)


@pytest.mark.slow
def test_load_20_clients_20_seconds():
    _load_test(n_clients=20, duration=20.0)


def test_cli_bad_source_is_one_clear_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "forward3d", "stream-proxy", "rtsp://phone/video"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["forward3d stream-proxy: error: stream-proxy: expected an http:// or "
                                             "https:// source URL, found 'rtsp://phone/video'"]
