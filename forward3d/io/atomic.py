"""Atomic file and folder writes: write to a temporary file (folder) beside the target, then rename.

An error while writing never leaves a half-written file at the target path, and an output folder is
replaced as a whole (never old and new results side by side). Files and folders get the permissions
the process umask gives (``0666 & ~umask`` / ``0777 & ~umask``), as ``open()`` would, not the private
``0600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_write", "atomic_path", "staged_folder", "check_output_folder", "OUTPUT_MARKER", "umask_mode"]

OUTPUT_MARKER = ".forward3d-output"


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file (folder) under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to ``path``.

    Use this for writers that want a file name (PyAV, open3d, numpy.savez ...). The temporary
    name keeps the target's suffix so that libraries choosing a format by extension still work.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    if "w" not in mode:
        raise ValueError(f"atomic_write: mode must be a write mode, found {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_folder(out: str | os.PathLike, overwrite: bool = False, option: str = "--out") -> Path:
    """Check BEFORE any work that ``out`` can become an output folder; returns it as a :class:`Path`.

    Accepted: a missing folder whose nearest existing parent is a writable folder, an empty folder, a
    previous forward3d output folder (it holds :data:`OUTPUT_MARKER`; it is replaced as a whole), or any
    folder with ``overwrite``.

    Raises:
        ValueError: ``out`` is a file, lies under a file, is not writable, or is a folder with other
            content and ``overwrite`` is False. The message names the path and what to do.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: expected a folder, found a file (choose another {option})")
    base = _nearest_existing(out.parent if not out.exists() else out)
    if not base.is_dir():
        raise ValueError(f"{option} {out}: cannot create it, {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: {base} is not writable by this user (choose another {option})")
    if out.is_dir():
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {out}: its parent {out.parent} is not writable, so the folder cannot be "
                             f"replaced (choose another {option})")
        entries = [e.name for e in out.iterdir()]
        if entries and OUTPUT_MARKER not in entries and not overwrite:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(f"{option} {out}: the folder exists and holds files forward3d did not write ({shown}); "
                             f"choose an empty or new folder, or pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; on success it REPLACES ``out`` as a whole.

    ``out`` is checked first (:func:`check_output_folder`). On an error (or Ctrl-C) the staging folder
    is removed and ``out`` is left as it was. The finished folder holds :data:`OUTPUT_MARKER`, so a
    later run may replace it without ``overwrite``.
    """
    out = check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    old: Path | None = None
    try:
        yield stage
        (stage / OUTPUT_MARKER).write_text("written by forward3d; the folder is replaced as a whole on re-runs\n",
                                           encoding="utf-8")
        os.chmod(stage, umask_mode(directory=True))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(stage, out)
    except BaseException:
        if old is not None and (old / "previous").exists() and not out.exists():
            os.replace(old / "previous", out)  # put the previous results back
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
