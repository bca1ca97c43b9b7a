"""Per-session private folders, their expiry and the port search for ``forward3d app``.

Every browser session gets a folder with a random name under one root folder
(:class:`SessionStore`); nothing the app writes or serves lives outside that root, and a session's
folder is removed (with the viewer it started) once it has been idle for ``ttl`` seconds.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["Session", "SessionStore", "find_free_port", "check_upload_size"]

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One browser session's private state.

    Attributes:
        key: the session key (gradio's ``session_hash``).
        folder: the private folder (a random name under the store's root).
        last_used: ``time.monotonic()`` of the last request.
        runs: runs started so far (each one writes into ``folder/run-<k>``).
        viewer: the embedded 3D viewer of the last run (anything with ``stop()``), or None.
        job: the session's running job (anything with ``stop()``), or None.
    """

    key: str
    folder: Path
    last_used: float = field(default_factory=time.monotonic)
    runs: int = 0
    viewer: Any = None
    job: Any = None

    def new_run_folder(self, kind: str = "run") -> Path:
        """A new empty ``folder/<kind>-<k>`` for one job."""
        self.runs += 1
        path = self.folder / f"{kind}-{self.runs:03d}"
        path.mkdir(parents=True, exist_ok=False)
        return path

    def set_viewer(self, viewer: Any) -> None:
        """Replace the session's viewer (the previous one is stopped)."""
        old, self.viewer = self.viewer, viewer
        if old is not None and old is not viewer:
            _stop_quietly(old)

    def close(self) -> None:
        if self.job is not None:
            self.job.stop()
        self.set_viewer(None)
        shutil.rmtree(self.folder, ignore_errors=True)


def _stop_quietly(viewer: Any) -> None:
    try:
        viewer.stop()
    except Exception as exc:  # a viewer that fails to stop must not keep a session alive
        log.warning("could not stop a session viewer: %s", exc)


class SessionStore:
    """Private per-session folders under ``root``, removed after ``ttl`` seconds without a request.

    Args:
        root: the root folder (created; default: a new ``forward3d-app-*`` folder in the system temp
            folder, removed by :meth:`close`).
        ttl: seconds a session may stay idle before its folder is removed.
        clock: the time function (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, root: str | os.PathLike | None = None, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl > 0:
            raise ValueError(f"--session-ttl: expected > 0 seconds, found {ttl}")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="forward3d-app-") if root is None else root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl = float(ttl)
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._janitor: threading.Thread | None = None
        self._closed = threading.Event()

    def get(self, key: str | None) -> Session:
        """The session ``key`` (created with a new random folder on first use); marks it used now."""
        key = key or "anonymous"
        with self._lock:
            s = self._sessions.get(key)
            if s is None:
                folder = self.root / secrets.token_hex(16)
                folder.mkdir(mode=0o700)
                s = self._sessions[key] = Session(key, folder, self.clock())
            s.last_used = self.clock()
            return s

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    def remove(self, key: str | None) -> None:
        """Remove session ``key`` and its folder now (the browser tab closed)."""
        with self._lock:
            s = self._sessions.pop(key or "anonymous", None)
        if s is not None:
            s.close()

    def expire(self) -> list[str]:
        """Remove every session idle for more than ``ttl`` seconds; returns their keys."""
        now = self.clock()
        with self._lock:
            old = [k for k, s in self._sessions.items() if now - s.last_used > self.ttl]
            gone = [self._sessions.pop(k) for k in old]
        for s in gone:
            s.close()
        if old:
            log.info("removed %d expired session(s)", len(old))
        return old

    def contains_path(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` (links resolved) lies inside the root."""
        try:
            Path(path).resolve().relative_to(self.root)
        except ValueError:
            return False
        return True

    def start_janitor(self, interval: float | None = None) -> None:
        """Expire sessions every ``interval`` seconds (default ``min(ttl / 4, 60)``) in a daemon thread."""
        period = interval if interval is not None else min(self.ttl / 4, 60.0)

        def loop() -> None:
            while not self._closed.wait(period):
                self.expire()

        self._janitor = threading.Thread(target=loop, name="forward3d-app-janitor", daemon=True)
        self._janitor.start()

    def close(self) -> None:
        """Remove every session (and the root when the store created it)."""
        self._closed.set()
        with self._lock:
            gone = list(self._sessions.values())
            self._sessions.clear()
        for s in gone:
            s.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def check_upload_size(path: str | os.PathLike, max_bytes: int) -> None:
    """ValueError naming the file when it is larger than ``max_bytes``."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise ValueError(f"{Path(path).name}: the upload is {size / 1e6:.1f} MB, over the "
                         f"{max_bytes / 1e6:.0f} MB limit (--max-upload-mb)")


def find_free_port(host: str = "127.0.0.1", start: int = 7860, tries: int = 100) -> int:
    """The first port from ``start`` upward that ``host`` can listen on (``start=0``: any free port).

    Raises:
        ValueError: bad ``start``, or no free port among ``tries`` candidates.
    """
    if not 0 <= int(start) <= 65535:
        raise ValueError(f"--port: expected 0..65535, found {start}")
    if start == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    for port in range(int(start), min(int(start) + tries, 65536)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise ValueError(f"--port: no free port on {host} in {start}..{min(start + tries, 65536) - 1}")
