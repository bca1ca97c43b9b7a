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
