"""Starting ``forward3d app``: its options (:class:`AppConfig`), the port search and the gradio launch
(queue, upload bound, served paths)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from forward3d.app.session import SessionStore, find_free_port
from forward3d.config import option

__all__ = ["AppConfig", "AppServer", "launch_app", "import_gradio"]

log = logging.getLogger(__name__)


def import_gradio():
    """The gradio module, or ImportError naming the extra."""
    from forward3d.optional import import_optional

    return import_optional("gradio", "app", "the app")


@dataclass
class AppConfig:
    """Options of ``forward3d app`` (the Gradio web app).

    Attributes:
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes the app and every
            session's embedded 3D viewer to the network).
        port: first port tried; the next free one upward is taken when it is busy.
        concurrency: jobs run at the same time (the others wait in the queue).
        session_ttl: seconds a browser session may stay idle before its folder (uploads, outputs) and
            its 3D viewer are removed.
        max_upload_mb: largest upload in megabytes (a clear message above it).
        max_unzipped_mb: largest uncompressed size in megabytes of an uploaded RGB-D dataset zip.
        root: folder holding the per-session folders (default: a new temporary folder, removed at exit).
        viewer: embed a live viser 3D view of each run (needs forward3d[viewer]).
        backend: back-end selected when the page opens.
    """

    host: str = option("127.0.0.1", metavar="HOST")
    port: int = option(7860, metavar="PORT")
    concurrency: int = option(1, metavar="N")
    session_ttl: float = option(3600.0, metavar="S")
    max_upload_mb: float = option(500.0, metavar="MB")
    max_unzipped_mb: float = option(4000.0, metavar="MB")
    root: str | None = option(None, metavar="DIR")
    viewer: bool = True
    backend: str = "rgbd"

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"--port: expected 0..65535, found {self.port}")
        if int(self.concurrency) < 1:
            raise ValueError(f"--concurrency: expected >= 1, found {self.concurrency}")
        if not self.session_ttl > 0:
            raise ValueError(f"--session-ttl: expected > 0 seconds, found {self.session_ttl}")
        for name in ("max_upload_mb", "max_unzipped_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected > 0, found {getattr(self, name)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    @property
    def max_unzipped_bytes(self) -> int:
        return int(self.max_unzipped_mb * 1e6)


@dataclass
class AppServer:
    """A running app.

    Attributes:
        demo: the gradio Blocks.
        url: where it is served.
        port: the port it listens on.
        store: the session folders.
        previous_temp_dir: ``GRADIO_TEMP_DIR`` before the app set it (restored by :meth:`close`).
    """

    demo: Any
    url: str
    port: int
    store: SessionStore
    previous_temp_dir: str | None = None

    def close(self) -> None:
        """Stop serving; remove the session folders and gradio's cache (and the root when the app made it)."""
        import shutil

        self.demo.close()
        shutil.rmtree(self.store.root / "_gradio", ignore_errors=True)
        self.store.close()
        _set_env("GRADIO_TEMP_DIR", self.previous_temp_dir)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def launch_app(config: AppConfig | None = None, *, block: bool = True) -> AppServer:
    """Build and serve the app (``block``: until Ctrl-C, then close it).

    Only the session root is served to the browser (gradio ``allowed_paths``); uploads above
    ``max_upload_mb`` are refused by gradio before they reach a handler.
    """
    from forward3d.app.ui import build_app

    cfg = config or AppConfig()
    import_gradio()
    store = SessionStore(cfg.root, ttl=cfg.session_ttl)
    # gradio's upload/output cache goes inside the root too (gradio reads the variable while serving:
    # it is set for the app's lifetime and restored by AppServer.close)
    cache = store.root / "_gradio"
    cache.mkdir(exist_ok=True)
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    try:
        demo = build_app(cfg, store)
        port = find_free_port(cfg.host, cfg.port)
    except BaseException:
        _set_env("GRADIO_TEMP_DIR", previous)
        store.close()
        raise
    if cfg.port and port != cfg.port:
        log.warning("port %d is busy: using %d", cfg.port, port)
    demo.queue(default_concurrency_limit=int(cfg.concurrency))
    store.start_janitor()
    _, url, _ = demo.launch(server_name=cfg.host, server_port=port, prevent_thread_lock=True, quiet=True,
                            allowed_paths=[str(store.root)], max_file_size=cfg.max_upload_bytes,
                            footer_links=[], show_error=False)
    server = AppServer(demo, url or f"http://{cfg.host}:{port}/", port, store, previous)
    if block:
        try:
            demo.block_thread()
        finally:
            server.close()
    return server
