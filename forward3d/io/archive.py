"""Zip archives: safe extraction of uploaded datasets and zipping of output folders (atomic)."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from forward3d.io.atomic import atomic_write

__all__ = ["safe_extract_zip", "zip_folder"]


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike, max_bytes: int = 2 << 30,
                     max_members: int = 100_000) -> Path:
    """Extract the zip ``archive`` into ``dest``, refusing anything that could escape it or blow up.

    Refused (one ValueError naming the archive and the member): not a zip file, absolute paths, drive
    letters, ``..`` components, symbolic links, more than ``max_members`` entries, more than
    ``max_bytes`` uncompressed in total (counted while extracting, so lying headers do not help).

    Returns:
        the dataset folder: ``dest``, or its only top-level folder when the archive holds exactly one
        (``scene.zip`` holding ``scene/rgb/...``).
    """
    archive, dest = Path(archive), Path(dest)
    name = archive.name
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{name}: not a zip archive (expected a .zip of an RGB-D dataset folder)")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ValueError(f"{name}: {len(infos)} entries, over the limit of {max_members}")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise ValueError(f"{name}: {declared / 1e6:.0f} MB uncompressed, over the {max_bytes / 1e6:.0f} MB "
                             "limit (a zip bomb, or a dataset too large for the app)")
        members = []
        for info in infos:
            member = info.filename
            parts = PurePosixPath(member.replace("\\", "/")).parts
            if (member.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts):
                raise ValueError(f"{name}: unsafe member path {member!r} (absolute or with '..')")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"{name}: member {member!r} is a symbolic link (refused)")
            target = (root / Path(*parts)).resolve() if parts else root
            if target != root and root not in target.parents:
                raise ValueError(f"{name}: member {member!r} would be written outside the folder")
            members.append((info, target))
        written = 0
        for info, target in members:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise ValueError(f"{name}: more than {max_bytes / 1e6:.0f} MB uncompressed "
                                         "(its headers under-declare the sizes: refused)")
                    dst.write(chunk)
    entries = [p for p in root.iterdir() if p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def zip_folder(folder: str | os.PathLike, path: str | os.PathLike, arcname: str | None = None) -> Path:
    """Write the zip ``path`` of every file under ``folder`` (paths inside: ``arcname/relative``, by
    default the folder's name), atomically; returns ``Path(path)``."""
    folder, path = Path(folder), Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"zip_folder: {folder} is not a folder")
    top = folder.name if arcname is None else arcname
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                zf.write(p, str(PurePosixPath(top, *p.relative_to(folder).parts)))
    return path
