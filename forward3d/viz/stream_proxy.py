"""Re-serve one MJPEG/HTTP camera to many clients (``forward3d stream-proxy``), standard library only.

Phones running DroidCam (``http://PHONE:4747/video``) and many IP cameras accept a single client.
:class:`StreamProxy` holds ONE upstream connection, whatever the number of clients, and re-serves
its frames:

- ``/video`` (also ``/video.mjpg``, ``/stream.mjpg``): ``multipart/x-mixed-replace`` JPEG stream;
- ``/snapshot.jpg``: the latest frame; ``/status``: JSON counters; ``/``: a small HTML page.

Behaviour:

- the upstream is read by one thread; when it drops (or stalls for ``read_timeout``), it is
  reconnected with exponential backoff (``backoff_min`` doubling up to ``backoff_max``); clients keep
  their connection meanwhile and resume receiving as soon as frames flow again;
- only the LATEST frame is kept: each client thread sends the newest frame it has not sent yet, so a
  slow client skips frames instead of slowing the others, and memory is bounded (one frame plus each
  socket's buffer); a client that stops reading is dropped after ``client_timeout``;
- at most ``max_clients`` clients at once (others get HTTP 503);
- the upstream may be an MJPEG stream (``multipart/x-mixed-replace``; parts with or without
  ``Content-Length``) or a single-JPEG URL (``image/jpeg``), which is polled;
- binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import socket
import socketserver
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["StreamProxy", "ProxyConfig", "FrameHub", "read_mjpeg_parts", "BOUNDARY"]

log = logging.getLogger(__name__)

BOUNDARY = "forward3dframe"
_STREAM_PATHS = ("/video", "/video.mjpg", "/stream.mjpg", "/mjpeg", "/stream")
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


@dataclass
class ProxyConfig:
    """Settings of :class:`StreamProxy` (the CLI takes its defaults from here).

    Attributes:
        host, port: where clients connect (port 0: any free port).
        max_clients: clients served at once.
        connect_timeout, read_timeout: upstream socket timeouts, seconds (a stall longer than
            ``read_timeout`` counts as a drop).
        backoff_min, backoff_max: reconnection delays, seconds (doubling from min to max).
        client_timeout: a client whose socket accepts nothing for this long is dropped, seconds.
        max_frame_bytes: larger upstream parts are refused (a broken stream, not a picture).
        poll_interval: seconds between requests to a single-JPEG (non-streaming) upstream.
    """

    host: str = "127.0.0.1"
    port: int = 8098
    max_clients: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    backoff_min: float = 0.25
    backoff_max: float = 5.0
    client_timeout: float = 10.0
    max_frame_bytes: int = 16 << 20
    poll_interval: float = 1.0 / 30.0

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"ProxyConfig: expected port in 0..65535, found {self.port}")
        if self.max_clients < 1:
            raise ValueError(f"ProxyConfig: expected max_clients >= 1, found {self.max_clients}")
        for name in ("connect_timeout", "read_timeout", "backoff_min", "backoff_max", "client_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ProxyConfig: expected {name} > 0, found {getattr(self, name)}")
        if self.backoff_max < self.backoff_min:
            raise ValueError(f"ProxyConfig: expected backoff_max >= backoff_min, found {self.backoff_max} < "
                             f"{self.backoff_min}")


class FrameHub:
    """The latest frame and its sequence number; readers wait for a newer one (never queue)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: bytes | None = None
        self._seq = 0

    def publish(self, frame: bytes) -> int:
        with self._cond:
            self._frame = frame
            self._seq += 1
            self._cond.notify_all()
            return self._seq

    def latest(self) -> tuple[int, bytes | None]:
        with self._cond:
            return self._seq, self._frame

    def wait_newer(self, seq: int, timeout: float) -> tuple[int, bytes] | None:
        """``(seq, frame)`` of the newest frame after ``seq``, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > seq and self._frame is not None, timeout):
                return None
            return self._seq, self._frame  # type: ignore[return-value]

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _norm_boundary(b: bytes) -> bytes:
    return b.strip().strip(b"-")


def read_mjpeg_parts(fp, boundary: str, max_bytes: int):
    """Yield the bodies of a ``multipart/x-mixed-replace`` stream read from the binary file ``fp``.

    Parts with a ``Content-Length`` header are read exactly; others up to the next boundary line.
    Boundaries are matched with or without the leading ``--`` (cameras differ). Ends at EOF; raises
    ValueError on a part larger than ``max_bytes``.
    """
    want = _norm_boundary(boundary.encode("latin-1"))
    if not want:
        raise ValueError("read_mjpeg_parts: empty boundary")

    def is_delim(line: bytes) -> bool:  # "--B", "--B--" (closing) or a bare "B"
        return len(line) <= len(want) + 8 and line.strip().strip(b"-") == want

    line = fp.readline(max_bytes)
    while line and not is_delim(line):  # preamble
        line = fp.readline(max_bytes)
    while line:
        headers: dict[bytes, bytes] = {}
        while True:
            h = fp.readline(65536)
            if not h:
                return
            if h in (b"\r\n", b"\n"):
                break
            if b":" in h:
                k, v = h.split(b":", 1)
                headers[k.strip().lower()] = v.strip()
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():
            n = int(length)
            if n > max_bytes:
                raise ValueError(f"MJPEG part of {n} bytes exceeds the limit of {max_bytes}")
            body = fp.read(n)
            if len(body) < n:
                return  # truncated (the stream dropped mid-frame)
            yield body
            line = fp.readline(max_bytes)
            while line and not is_delim(line):  # CRLF after the body, then the next boundary
                line = fp.readline(max_bytes)
        else:
            chunks: list[bytes] = []
            size = 0
            line = fp.readline(max_bytes)
            while line and not is_delim(line):
                chunks.append(line)
                size += len(line)
                if size > max_bytes:
                    raise ValueError(f"MJPEG part exceeds the limit of {max_bytes} bytes")
                line = fp.readline(max_bytes)
            if not line:
                return  # EOF inside a part: incomplete, dropped
            body = b"".join(chunks)
            if body.endswith(b"\r\n"):
                body = body[:-2]
            elif body.endswith(b"\n"):
                body = body[:-1]
            yield body


def _is_jpeg(b: bytes) -> bool:
    return len(b) > 4 and b.startswith(_JPEG_SOI) and b.rstrip(b"\r\n\x00").endswith(_JPEG_EOI)


@dataclass
class _Stats:
    upstream_connections: int = 0
    upstream_connected: bool = False
    frames_in: int = 0
    frames_out: int = 0
    frames_skipped: int = 0
    frames_dropped_invalid: int = 0
    clients: int = 0
    clients_total: int = 0
    clients_refused: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.time)


class StreamProxy:
    """One upstream MJPEG/HTTP camera re-served to many clients (see the module docstring).

    Use :meth:`start` / :meth:`stop` (or as a context manager); :attr:`url` is the stream URL.
    """

    def __init__(self, source_url: str, config: ProxyConfig | None = None) -> None:
        u = urllib.parse.urlsplit(source_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"stream-proxy: expected an http:// or https:// source URL, found {source_url!r}")
        self.source_url = source_url
        self._src = u
        self.config = config or ProxyConfig()
        self.hub = FrameHub()
        self._stats = _Stats()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._upstream_conn: http.client.HTTPConnection | None = None
        self._server: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> "StreamProxy":
        if self._server is not None:
            raise RuntimeError("StreamProxy.start: already started")
        self._server = _make_server(self, self.config.host, int(self.config.port))
        t_srv = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                 name="stream-proxy-http", daemon=True)
        t_up = threading.Thread(target=self._upstream_loop, name="stream-proxy-upstream", daemon=True)
        self._threads = [t_srv, t_up]
        for t in self._threads:
            t.start()
        log.info("stream-proxy: %s -> %s", self.source_url, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the upstream connection (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.hub.wake_all()
        conn = self._upstream_conn
        if conn is not None:
            _close_quietly(conn)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "StreamProxy":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until Ctrl-C or :meth:`stop`, then stop."""
        try:
            while not self._stop.wait(0.25):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("StreamProxy: not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.port}/video"

    def stats(self) -> dict:
        """Counters: upstream connections / state, frames in / out / skipped for slow clients / invalid,
        clients now / in total / refused, the last upstream error."""
        with self._stats_lock:
            s = dict(self._stats.__dict__)
        s["uptime_s"] = time.time() - s.pop("started")
        s["source"] = self.source_url
        return s

    def _bump(self, **changes) -> None:
        with self._stats_lock:
            for k, v in changes.items():
                if isinstance(v, bool) or v is None or isinstance(v, str):
                    setattr(self._stats, k, v)
                else:
                    setattr(self._stats, k, getattr(self._stats, k) + v)

    # -- upstream ----------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPResponse:
        u, cfg = self._src, self.config
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=cfg.connect_timeout)
        self._upstream_conn = conn
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        headers = {"User-Agent": "forward3d-stream-proxy", "Accept": "multipart/x-mixed-replace, image/jpeg, */*"}
        if u.username:
            import base64

            cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise ConnectionError(f"HTTP {resp.status} {resp.reason}")
        if conn.sock is not None:
            conn.sock.settimeout(cfg.read_timeout)
        return resp

    def _upstream_loop(self) -> None:
        cfg = self.config
        delay = cfg.backoff_min
        failures = 0
        while not self._stop.is_set():
            got_frames = False
            try:
                resp = self._connect()
                self._bump(upstream_connections=1, upstream_connected=True)
                if failures:
                    log.info("stream-proxy: upstream %s is back", self.source_url)
                ctype = resp.getheader("Content-Type", "") or ""
                for frame in self._frames_of(resp, ctype):
                    if self._stop.is_set():
                        break
                    if not _is_jpeg(frame):
                        self._bump(frames_dropped_invalid=1)
                        continue
                    self.hub.publish(frame)
                    self._bump(frames_in=1)
                    got_frames = True
                    failures, delay = 0, cfg.backoff_min
                if not self._stop.is_set():
                    raise ConnectionError("the stream ended")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._stop.is_set():
                    break
                msg = _describe(exc)
                self._bump(upstream_connected=False, last_error=msg)
                failures += 1
                if got_frames:
                    delay = cfg.backoff_min
                level = logging.WARNING if failures in (1, 10) or failures % 100 == 0 else logging.DEBUG
                log.log(level, "stream-proxy: upstream %s: %s; reconnecting in %.2g s (attempt %d)",
                        self.source_url, msg, delay, failures)
                self._stop.wait(delay)
                delay = min(delay * 2, cfg.backoff_max)
            finally:
                conn = self._upstream_conn
                if conn is not None:
                    _close_quietly(conn)
        self._bump(upstream_connected=False)

    def _frames_of(self, resp: http.client.HTTPResponse, ctype: str):
        cfg = self.config
        main = ctype.split(";")[0].strip().lower()
        if main.startswith("multipart/"):
            params = dict(p.strip().split("=", 1) for p in ctype.split(";")[1:] if "=" in p)
            boundary = params.get("boundary", "").strip().strip('"')
            if not boundary:
                raise ValueError(f"multipart stream without a boundary (Content-Type {ctype!r})")
            yield from read_mjpeg_parts(resp, boundary, cfg.max_frame_bytes)
        elif main in ("image/jpeg", "image/jpg"):
            # a snapshot URL: one picture per request, polled
            yield resp.read(cfg.max_frame_bytes + 1)[: cfg.max_frame_bytes]
            while not self._stop.is_set():
                t0 = time.monotonic()
                _close_quietly(self._upstream_conn)
                resp = self._connect()
                yield resp.read(cfg.max_frame_bytes)
                self._stop.wait(max(0.0, cfg.poll_interval - (time.monotonic() - t0)))
        else:
            raise ValueError(f"expected an MJPEG (multipart/x-mixed-replace) or JPEG response, found Content-Type "
                             f"{ctype or '(none)'!r}")

    # -- clients -----------------------------------------------------------------------------------
    def _serve_stream(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        cfg = self.config
        with self._stats_lock:
            if self._stats.clients >= cfg.max_clients:
                self._stats.clients_refused += 1
                full = True
            else:
                self._stats.clients += 1
                self._stats.clients_total += 1
                full = False
        if full:
            handler.send_error(503, f"stream-proxy: {cfg.max_clients} clients already connected")
            return
        try:
            handler.connection.settimeout(cfg.client_timeout)
            handler.send_response(200)
            handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            handler.send_header("Cache-Control", "no-cache, no-store")
            handler.send_header("Pragma", "no-cache")
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.flush()
            seq = 0
            while not self._stop.is_set():
                got = self.hub.wait_newer(seq, timeout=0.5)
                if got is None:
                    continue
                skipped = got[0] - seq - 1 if seq else 0
                seq, frame = got
                head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame)}\r\n\r\n"
                        ).encode("ascii")
                handler.wfile.write(head + frame + b"\r\n")
                handler.wfile.flush()
                self._bump(frames_out=1, frames_skipped=skipped)
        except (OSError, ValueError):
            pass  # the client went away (or stalled past client_timeout)
        finally:
            self._bump(clients=-1)
            handler.close_connection = True

    def _serve_snapshot(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        seq, frame = self.hub.latest()
        if frame is None:
            got = self.hub.wait_newer(0, timeout=min(5.0, self.config.read_timeout))
            frame = None if got is None else got[1]
        if frame is None:
            handler.send_error(503, "stream-proxy: no frame from the upstream camera yet")
            return
        _send(handler, 200, "image/jpeg", frame)

    def _serve_status(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        _send(handler, 200, "application/json", json.dumps(self.stats(), indent=1).encode())

    def _serve_index(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>forward3d stream-proxy</title></head>"
                "<body style='margin:0;background:#111;color:#ccc;font-family:sans-serif'>"
                "<img src='/video' style='max-width:100%;display:block;margin:auto' alt='live stream'>"
                "<p style='text-align:center'>forward3d stream-proxy: <a href='/video'>/video</a> · "
                "<a href='/snapshot.jpg'>/snapshot.jpg</a> · <a href='/status'>/status</a></p></body></html>")
        _send(handler, 200, "text/html; charset=utf-8", page.encode())


def _send(handler, status: int, ctype: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-cache, no-store")
    handler.end_headers()
    handler.wfile.write(body)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc})"
    return str(exc) or type(exc).__name__


def _close_quietly(conn) -> None:
    if conn is None:
        return
    try:
        if conn.sock is not None:
            conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


def _make_server(proxy: StreamProxy, host: str, port: int) -> socketserver.ThreadingTCPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "forward3d-stream-proxy"
        protocol_version = "HTTP/1.0"

        def do_GET(self):  # noqa: N802
            path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
            if path in _STREAM_PATHS:
                proxy._serve_stream(self)
            elif path in ("/snapshot.jpg", "/snapshot", "/shot.jpg"):
                proxy._serve_snapshot(self)
            elif path == "/status":
                proxy._serve_status(self)
            elif path == "/":
                proxy._serve_index(self)
            else:
                self.send_error(404, f"stream-proxy: unknown path {path!r}; try /video or /snapshot.jpg")

        def log_message(self, fmt, *args):
            log.debug("client %s: " + fmt, self.client_address[0], *args)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 64

        def handle_error(self, request, client_address):  # a client's broken pipe is not an error
            log.debug("stream-proxy: client %s dropped", client_address)

    try:
        return Server((host, port), Handler)
    except OSError as exc:
        raise ValueError(f"stream-proxy: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
