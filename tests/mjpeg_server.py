"""A local MJPEG-over-HTTP server for stream tests (127.0.0.1, bounded, stops by itself)."""

from __future__ import annotations

import http.server
import io
import socket
import socketserver
import threading
import time

import numpy as np
from PIL import Image


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class MJPEGServer:
    """Serves ``images`` once as multipart/x-mixed-replace JPEG frames on 127.0.0.1.

    ``drop_at``: send half of that frame, then cut the socket (a dropped live stream).
    Use as a context manager; it yields the stream URL.
    """

    def __init__(self, images: list[np.ndarray], drop_at: int | None = None) -> None:
        jpgs = [jpeg_bytes(im) for im in images]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i, jpg in enumerate(jpgs):
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
                        if i == drop_at:
                            self.wfile.write(jpg[: len(jpg) // 2])
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        self.wfile.write(jpg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.005)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class LiveMJPEGServer:
    """An endless MJPEG camera on 127.0.0.1, like a phone running DroidCam: ``fps`` frames per second
    (the given images in a loop), ONE client at a time (a second concurrent client gets HTTP 503, as
    DroidCam refuses it), restartable on the same port (``stop()`` cuts every client, ``start()``
    serves again), with counters: ``connections`` (accepted stream clients in total),
    ``max_concurrent``, ``refused``, ``frames_sent``.

    ``content_length=False`` sends parts without ``Content-Length`` (cameras that only use boundaries).
    """

    def __init__(self, images: list[np.ndarray], fps: float = 30.0, port: int = 0, content_length: bool = True,
                 single_client: bool = True) -> None:
        self.jpgs = [jpeg_bytes(im, quality=80) for im in images]
        self.fps = fps
        self.port = port
        self.content_length = content_length
        self.single_client = single_client
        self.lock = threading.Lock()
        self.connections = 0
        self.active = 0
        self.max_concurrent = 0
        self.refused = 0
        self.frames_sent = 0
        self.server: socketserver.ThreadingTCPServer | None = None
        self.thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video"

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                with owner.lock:
                    busy = owner.single_client and owner.active >= 1
                    if busy:
                        owner.refused += 1
                    else:
                        owner.active += 1
                        owner.connections += 1
                        owner.max_concurrent = max(owner.max_concurrent, owner.active)
                if busy:
                    self.send_error(503, "camera busy: one client at a time")
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=--droidframe")
                    self.end_headers()
                    i = 0
                    t_next = time.monotonic()
                    while not owner._stopping.is_set():
                        jpg = owner.jpgs[i % len(owner.jpgs)]
                        head = b"--droidframe\r\nContent-Type: image/jpeg\r\n"
                        if owner.content_length:
                            head += b"Content-Length: %d\r\n" % len(jpg)
                        self.wfile.write(head + b"\r\n" + jpg + b"\r\n")
                        self.wfile.flush()
                        with owner.lock:
                            owner.frames_sent += 1
                        i += 1
                        t_next += 1.0 / owner.fps
                        time.sleep(max(0.0, t_next - time.monotonic()))
                except OSError:
                    pass
                finally:
                    with owner.lock:
                        owner.active -= 1

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> "LiveMJPEGServer":
        self._stopping.clear()
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), self._handler(), bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.server_bind()
        server.server_activate()
        self.server = server
        self.port = server.server_address[1]
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and cut every client (the camera is switched off)."""
        if self.server is None:
            return
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)
        t_end = time.monotonic() + 5
        while self.active and time.monotonic() < t_end:
            time.sleep(0.01)
        self.server = None

    def __enter__(self) -> "LiveMJPEGServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
