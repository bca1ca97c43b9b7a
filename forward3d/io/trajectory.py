"""Camera trajectories: TUM RGB-D text files and Redwood / Open3D ``.log`` files.

TUM (https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats): one pose per line,
``timestamp tx ty tz qx qy qz qw``; the pose is camera-to-world (the camera's optical centre and
orientation in the world frame); the quaternion is stored ``xyzw`` on disk (forward3d uses ``wxyz``
in memory). Lines starting with ``#`` are comments.

Redwood / Open3D ``.log`` (http://redwood-data.org/indoor/fileformat.html): per frame one metadata
line of three integers (we write ``i i i+1`` as Open3D does; it is ignored when reading) then the
4x4 camera-to-world matrix on four lines.

The small quaternion helpers here (``wxyz``) are numpy only, so io does not depend on torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from forward3d.geometry._util import to_numpy64
from forward3d.geometry.quaternion import quat_to_rotmat, rotmat_to_quat
from forward3d.io.atomic import atomic_write

__all__ = [
    "write_tum",
    "read_tum",
    "write_redwood_log",
    "read_redwood_log",
    "read_redwood_log_ids",
    "read_trajectory",
    "quat_wxyz_to_rotmat",
    "rotmat_to_quat_wxyz",
    "associate",
    "read_number_rows",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Quaternions (wxyz)
# --------------------------------------------------------------------------------------------------


# wxyz quaternions <-> rotation matrices: the geometry package owns the maths (one implementation).
quat_wxyz_to_rotmat = quat_to_rotmat
rotmat_to_quat_wxyz = rotmat_to_quat


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_c2w(what: str, path: Path, c2w: np.ndarray) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"{what} {path}: expected c2w of shape [N, 4, 4], found {list(c2w.shape)}")
    if not np.isfinite(c2w).all():
        raise ValueError(f"{what} {path}: c2w contains non-finite values")
    return c2w


# --------------------------------------------------------------------------------------------------
# TUM
# --------------------------------------------------------------------------------------------------


def write_tum(path: str | os.PathLike, timestamps: np.ndarray, c2w: np.ndarray) -> Path:
    """Write a TUM trajectory ``timestamp tx ty tz qx qy qz qw`` (camera-to-world, xyzw).

    Args:
        path: target text file.
        timestamps: ``[N]`` seconds.
        c2w: ``[N, 4, 4]`` camera-to-world poses (rotation part must be a rotation; it is not
            re-orthonormalised, so Sim(3) scale in it is an error).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    c2w = _check_c2w("write_tum", path, c2w)
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(ts) != len(c2w):
        raise ValueError(f"write_tum {path}: expected {len(c2w)} timestamps (one per pose), found {len(ts)}")
    R = c2w[:, :3, :3]
    det = np.linalg.det(R) if len(R) else np.ones(0)
    if len(R) and (np.abs(det - 1.0).max() > 1e-3):
        raise ValueError(f"write_tum {path}: expected rotation matrices (det 1) in c2w, found det in "
                         f"[{det.min():.6g}, {det.max():.6g}]")
    q = rotmat_to_quat_wxyz(R) if len(R) else np.zeros((0, 4))
    rows = np.concatenate([ts[:, None], c2w[:, :3, 3], q[:, 1:], q[:, :1]], axis=1)
    with atomic_write(path, "w") as f:
        f.write("# timestamp tx ty tz qx qy qz qw (camera-to-world, forward3d / OpenCV camera axes)\n")
        for r in rows:
            f.write(f"{r[0]:.6f} " + " ".join(f"{v:.9f}" for v in r[1:]) + "\n")
    log.debug("wrote %d poses to %s", len(c2w), path)
    return path


def read_number_rows(path: str | os.PathLike, count: int, what: str, expected: str = "numbers"):
    """Yield ``(lineno, text, values)`` of every data line of a text file of ``count`` numbers per line
    (blank lines and ``#`` comments skipped, commas accepted as separators). A line with another count or
    a non-number raises ``ValueError`` starting with ``what:lineno``."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            tok = text.replace(",", " ").split()
            if len(tok) != count:
                raise ValueError(f"{what}:{lineno}: expected {count} {expected}, found {len(tok)}: {text[:80]!r}")
            try:
                yield lineno, text, [float(t) for t in tok]
            except ValueError:
                raise ValueError(f"{what}:{lineno}: expected numbers, found {text[:80]!r}") from None


def read_tum(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory.

    Blank lines and lines starting with ``#`` are skipped; commas are accepted as separators.
    Quaternions are normalised.

    Returns:
        timestamps ``[N]`` float64, c2w ``[N, 4, 4]`` float64.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TUM trajectory not found: {path}")
    rows = []
    for lineno, text, vals in read_number_rows(path, 8, f"TUM {path}", "values 'timestamp tx ty tz qx qy qz qw'"):
        if not np.isfinite(vals).all():
            raise ValueError(f"TUM {path}:{lineno}: expected finite numbers, found {text[:80]!r}")
        if np.linalg.norm(vals[4:8]) < 1e-12:
            raise ValueError(f"TUM {path}:{lineno}: expected a non-zero quaternion, found {text[:80]!r}")
        rows.append(vals)
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
    c2w = np.tile(np.eye(4), (len(arr), 1, 1))
    if len(arr):
        q_wxyz = np.concatenate([arr[:, 7:8], arr[:, 4:7]], axis=1)
        c2w[:, :3, :3] = quat_wxyz_to_rotmat(q_wxyz)
        c2w[:, :3, 3] = arr[:, 1:4]
    return arr[:, 0].copy(), c2w


# --------------------------------------------------------------------------------------------------
# Redwood / Open3D .log
# --------------------------------------------------------------------------------------------------


def write_redwood_log(path: str | os.PathLike, c2w: np.ndarray) -> Path:
    """Write camera-to-world poses ``[N, 4, 4]`` as a Redwood / Open3D ``.log`` trajectory."""
    path = Path(path)
    c2w = _check_c2w("write_redwood_log", path, c2w)
    with atomic_write(path, "w") as f:
        for i, T in enumerate(c2w):
            f.write(f"{i} {i} {i + 1}\n")
            for row in T:
                f.write(" ".join(f"{v:.10f}" for v in row) + "\n")
    return path


def read_redwood_log(path: str | os.PathLike) -> np.ndarray:
    """Read a Redwood / Open3D ``.log`` trajectory.

    Returns:
        c2w ``[N, 4, 4]`` float64, in file order (:func:`read_redwood_log_ids` also gives the frame ids).
    """
    return read_redwood_log_ids(path)[1]


def read_redwood_log_ids(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Redwood / Open3D ``.log`` trajectory: per frame an ``i j n`` line (``i``: the frame id)
    then the 4x4 c2w. Returns ``(ids [N] int64, c2w [N, 4, 4] float64)``; malformed files raise
    ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Redwood log not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Redwood log {path}: cannot read trajectory ({exc})") from exc
    lines = [(i, s.split()) for i, s in enumerate(text.splitlines(), start=1)
             if s.strip() and not s.lstrip().startswith("#")]
    if len(lines) % 5:
        raise ValueError(f"Redwood log {path}: expected 5 lines per frame ('i j n' + 4 matrix rows), "
                         f"found {len(lines)} non-empty lines")
    out = np.empty((len(lines) // 5, 4, 4), dtype=np.float64)
    ids = np.empty(len(out), dtype=np.int64)
    for k in range(len(out)):
        lineno, meta = lines[5 * k]
        try:
            if len(meta) != 3:
                raise ValueError
            ids[k] = int(meta[0])
        except ValueError:
            raise ValueError(f"Redwood log {path}:{lineno}: expected 3 integers 'i j n', found {' '.join(meta)!r}") from None
        for r in range(4):
            lineno, tok = lines[5 * k + 1 + r]
            if len(tok) != 4:
                raise ValueError(f"Redwood log {path}:{lineno}: expected 4 numbers, found {len(tok)}")
            try:
                out[k, r] = [float(t) for t in tok]
            except ValueError:
                raise ValueError(f"Redwood log {path}:{lineno}: expected numbers, found {' '.join(tok)!r}") from None
    if not np.isfinite(out).all():
        raise ValueError(f"Redwood log {path}: non-finite matrix values")
    return ids, out


def read_trajectory(path: str | os.PathLike) -> tuple[np.ndarray | None, np.ndarray]:
    """By suffix: ``.log`` -> Redwood (no timestamps); anything else -> TUM. Returns ``(timestamps or None, c2w)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory not found: {path}")
    if path.suffix.lower() == ".log":
        return None, read_redwood_log(path)
    return read_tum(path)


def associate(ts_a, ts_b, max_diff: float = 0.02, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Match two lists of timestamps one-to-one (TUM ``associate.py``).

    Candidate pairs have ``|a - (b + offset)| < max_diff``; they are taken greedily, closest first,
    each timestamp used at most once.

    Args:
        ts_a: ``[N]`` seconds. ts_b: ``[M]`` seconds.
        max_diff: largest accepted time difference (seconds).
        offset: added to ``ts_b`` before matching.

    Returns:
        ``(idx_a [K], idx_b [K])`` int64 indices, sorted by ``idx_a``'s timestamps.
    """
    a = to_numpy64("associate ts_a", ts_a).reshape(-1)
    b = to_numpy64("associate ts_b", ts_b).reshape(-1) + offset
    if not max_diff > 0:
        raise ValueError(f"associate: expected max_diff > 0, found {max_diff}")
    order_b = np.argsort(b, kind="stable")
    bs = b[order_b]
    lo = np.searchsorted(bs, a - max_diff, side="left")
    hi = np.searchsorted(bs, a + max_diff, side="right")
    counts = hi - lo
    ia = np.repeat(np.arange(len(a)), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    jb_sorted = np.arange(len(ia)) + starts
    ib = order_b[jb_sorted] if len(ia) else np.zeros(0, dtype=np.int64)
    diff = np.abs(a[ia] - b[ib])
    keep = diff < max_diff
    ia, ib, diff = ia[keep], ib[keep], diff[keep]
    used_a = np.zeros(len(a), dtype=bool)
    used_b = np.zeros(len(b), dtype=bool)
    pairs = []
    for k in np.lexsort((ib, ia, diff)):
        i, j = ia[k], ib[k]
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            pairs.append((i, j))
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs_arr = np.array(pairs, dtype=np.int64)
    pairs_arr = pairs_arr[np.lexsort((pairs_arr[:, 0], a[pairs_arr[:, 0]]))]
    return pairs_arr[:, 0], pairs_arr[:, 1]
