"""COLMAP text models (``cameras.txt``, ``images.txt``, ``points3D.txt``).

Conventions (https://colmap.github.io/format.html):

- ``images.txt`` stores the world-to-camera transform: ``QW QX QY QZ`` is the rotation of ``w2c``
  (Hamilton, wxyz, as forward3d) and ``TX TY TZ`` its translation. COLMAP camera axes are the OpenCV
  ones (x right, y down, z forward), so no axis change is needed.
- Pixel coordinates: COLMAP puts the upper-left image corner at ``(0, 0)`` and the centre of the
  upper-left pixel at ``(0.5, 0.5)``, the same as forward3d, so ``cx, cy`` are written unchanged.
- Cameras are written as ``PINHOLE fx fy cx cy`` (one camera per distinct ``K``). The reader also
  accepts ``SIMPLE_PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL``, ``OPENCV`` and ``FULL_OPENCV`` but keeps
  only the pinhole part (distortion is dropped with a warning).
- ``points3D.txt`` is written with an ``ERROR`` of 0 and empty tracks (no 2D observations).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forward3d.io.atomic import atomic_write
from forward3d.io.trajectory import quat_wxyz_to_rotmat, rotmat_to_quat_wxyz
from forward3d.types import PointCloud, Reconstruction

__all__ = ["CameraSet", "write_colmap_text", "read_colmap_text", "read_colmap_binary"]

log = logging.getLogger(__name__)

# model name -> (number of params, index of fx, fy, cx, cy in params; fy index None = same as fx)
_MODELS = {
    "SIMPLE_PINHOLE": (3, 0, None, 1, 2),
    "PINHOLE": (4, 0, 1, 2, 3),
    "SIMPLE_RADIAL": (4, 0, None, 1, 2),
    "RADIAL": (5, 0, None, 1, 2),
    "OPENCV": (8, 0, 1, 2, 3),
    "FULL_OPENCV": (12, 0, 1, 2, 3),
}
_UNDISTORTED = ("SIMPLE_PINHOLE", "PINHOLE")
_POINT_CHUNK = 200_000


@dataclass
class CameraSet:
    """Cameras (and optionally points) read from an external format.

    Attributes:
        names: N image names (file paths relative to the image folder).
        K: ``[N, 3, 3]`` float64 pinhole intrinsics (OpenCV, pixel centres at +0.5).
        c2w: ``[N, 4, 4]`` float64 camera-to-world (OpenCV camera axes).
        image_sizes: ``[N, 2]`` int64 ``(width, height)``.
        points: optional :class:`PointCloud` (world frame).
        extras: format-specific information (e.g. COLMAP ids, nerfstudio top-level keys).
    """

    names: list[str]
    K: np.ndarray
    c2w: np.ndarray
    image_sizes: np.ndarray
    points: PointCloud | None = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def to_reconstruction(self) -> Reconstruction:
        """A :class:`Reconstruction` (requires one image size for all cameras)."""
        sizes = np.unique(np.asarray(self.image_sizes).reshape(-1, 2), axis=0)
        if len(sizes) > 1:
            raise ValueError(f"CameraSet.to_reconstruction: expected one image size, found {sizes.tolist()}")
        size = tuple(int(v) for v in sizes[0]) if len(sizes) else (0, 0)
        stems = [Path(n).stem for n in self.names]
        return Reconstruction(c2w=self.c2w, K=self.K, image_size=size, frame_names=stems,
                              timestamps=self.extras.get("timestamps"), points=self.points,
                              metadata={"image_names": list(self.names)})


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _rigid_w2c(what: str, where: Path, c2w: np.ndarray) -> np.ndarray:
    R = c2w[:, :3, :3]
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() if len(R) else 0.0
    if err > 1e-4 or (len(R) and np.linalg.det(R).min() < 0):
        raise ValueError(f"{what} {where}: expected rigid c2w (rotation part orthonormal, det +1), "
                         f"found max |R R^T - I| = {err:.3g}")
    w2c = np.tile(np.eye(4), (len(c2w), 1, 1))
    w2c[:, :3, :3] = R.transpose(0, 2, 1)
    w2c[:, :3, 3] = -np.einsum("nij,nj->ni", w2c[:, :3, :3], c2w[:, :3, 3])
    return w2c


def write_colmap_text(
    folder: str | os.PathLike,
    recon: Reconstruction,
    points: PointCloud | None = None,
    image_names: list[str] | None = None,
) -> Path:
    """Write ``cameras.txt``, ``images.txt`` and ``points3D.txt`` into ``folder``.

    Args:
        folder: output folder (created).
        recon: cameras (``c2w``, ``K``, ``image_size``) of every frame.
        points: point cloud for ``points3D.txt``; defaults to ``recon.points`` (empty file if neither).
        image_names: N image file names for the ``NAME`` column; defaults to ``recon.frame_names``.

    Returns:
        ``Path(folder)``.
    """
    folder = Path(folder)
    n = len(recon)
    names = list(recon.frame_names if image_names is None else image_names)
    if len(names) != n:
        raise ValueError(f"write_colmap_text {folder}: expected {n} image names, found {len(names)}")
    bad = [s for s in names if not s or any(c.isspace() for c in s)]
    if bad:
        raise ValueError(f"write_colmap_text {folder}: image names must be non-empty without whitespace, "
                         f"found {bad[:3]}")
    w2c = _rigid_w2c("write_colmap_text", folder, recon.c2w)
    q = rotmat_to_quat_wxyz(w2c[:, :3, :3]) if n else np.zeros((0, 4))
    width, height = recon.image_size
    uniq, cam_index = np.unique(recon.K.reshape(n, 9), axis=0, return_inverse=True) if n else (np.zeros((0, 9)), [])
    cam_index = np.asarray(cam_index).reshape(-1)
    pc = points if points is not None else recon.points
    folder.mkdir(parents=True, exist_ok=True)

    # all three files are committed together: an error in any leaves none of them behind
    with contextlib.ExitStack() as stack:
        f_cam, f_img, f_pts = (stack.enter_context(atomic_write(folder / name, "w"))
                               for name in ("cameras.txt", "images.txt", "points3D.txt"))
        _write_cameras(f_cam, uniq, width, height)
        _write_images(f_img, q, w2c, cam_index, names)
        _write_points(f_pts, pc)
    log.debug("wrote COLMAP text model (%d images, %d cameras) to %s", n, len(uniq), folder)
    return folder


def _write_cameras(f, uniq: np.ndarray, width: int, height: int) -> None:
    f.write("# Camera list with one line of data per camera:\n"
            "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
            f"# Number of cameras: {len(uniq)}\n")
    for i, k in enumerate(uniq):
        f.write(f"{i + 1} PINHOLE {width} {height} {float(k[0])!r} {float(k[4])!r} {float(k[2])!r} {float(k[5])!r}\n")


def _write_images(f, q: np.ndarray, w2c: np.ndarray, cam_index: np.ndarray, names: list[str]) -> None:
    f.write("# Image list with two lines of data per image:\n"
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
            "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
            f"# Number of images: {len(names)}, mean observations per image: 0\n")
    for i, name in enumerate(names):
        vals = " ".join(repr(float(v)) for v in (*q[i], *w2c[i, :3, 3]))
        f.write(f"{i + 1} {vals} {int(cam_index[i]) + 1} {name}\n\n")


def _write_points(f, pc: PointCloud | None) -> None:
    m = 0 if pc is None else len(pc)
    f.write("# 3D point list with one line of data per point:\n"
            "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
            f"# Number of points: {m}, mean track length: 0\n")
    if not m:
        return
    colors = pc.colors if pc.colors is not None else np.full((m, 3), 128, np.uint8)
    for s in range(0, m, _POINT_CHUNK):
        e = min(m, s + _POINT_CHUNK)
        block = np.concatenate([np.arange(s + 1, e + 1)[:, None], pc.points[s:e].astype(np.float64),
                                colors[s:e].astype(np.float64)], axis=1)
        f.write(("%d %.9g %.9g %.9g %d %d %d 0\n" * (e - s)) % tuple(block.ravel()))


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _data_lines(path: Path):
    """Yield (line number, stripped line) of non-comment, non-empty lines."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            s = line.strip()
            if s and not s.startswith("#"):
                yield lineno, s


def _read_cameras(path: Path) -> dict[int, tuple[np.ndarray, int, int]]:
    cams = {}
    for lineno, s in _data_lines(path):
        tok = s.split()
        if len(tok) < 4 or tok[1] not in _MODELS:
            raise ValueError(f"COLMAP {path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]' with a model "
                             f"in {sorted(_MODELS)}, found {s[:80]!r}")
        nparams, ifx, ify, icx, icy = _MODELS[tok[1]]
        if len(tok) != 4 + nparams:
            raise ValueError(f"COLMAP {path}:{lineno}: model {tok[1]} expects {nparams} params, found {len(tok) - 4}")
        try:
            cid, w, h = int(tok[0]), int(tok[2]), int(tok[3])
            p = [float(t) for t in tok[4:]]
        except ValueError:
            raise ValueError(f"COLMAP {path}:{lineno}: expected numbers, found {s[:80]!r}") from None
        if tok[1] not in _UNDISTORTED and any(abs(v) > 0 for v in p[max(ifx, icy) + 1:]):
            log.warning("COLMAP %s:%d: %s distortion parameters are dropped (pinhole only)", path, lineno, tok[1])
        fx = p[ifx]
        fy = p[ify] if ify is not None else fx
        K = np.array([[fx, 0.0, p[icx]], [0.0, fy, p[icy]], [0.0, 0.0, 1.0]])
        cams[cid] = (K, w, h)
    return cams


def _read_images(path: Path) -> list[tuple[int, np.ndarray, np.ndarray, int, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        lineno = i + 1
        i += 1
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        if len(tok) < 10:
            raise ValueError(f"COLMAP {path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', "
                             f"found {s[:80]!r}")
        try:
            iid, cid = int(tok[0]), int(tok[8])
            q = np.array([float(t) for t in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
        except ValueError:
            raise ValueError(f"COLMAP {path}:{lineno}: expected numbers, found {s[:80]!r}") from None
        if np.linalg.norm(q) < 1e-12:
            raise ValueError(f"COLMAP {path}:{lineno}: expected a non-zero quaternion, found {tok[1:5]}")
        out.append((iid, q, t, cid, " ".join(tok[9:])))
        i += 1  # the POINTS2D line that always follows an image line (may be empty)
    return out


def _read_points(path: Path) -> PointCloud:
    toks: list[str] = []
    for lineno, s in _data_lines(path):
        tok = s.split(None, 8)
        if len(tok) < 8:
            raise ValueError(f"COLMAP {path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]', found {s[:80]!r}")
        toks.extend(tok[1:7])
    try:
        arr = np.fromiter(map(float, toks), dtype=np.float64, count=len(toks)).reshape(-1, 6)
    except ValueError as e:
        raise ValueError(f"COLMAP {path}: expected numbers in columns X Y Z R G B ({e})") from None
    cols = np.clip(np.rint(arr[:, 3:]), 0, 255).astype(np.uint8)
    return PointCloud(arr[:, :3].astype(np.float32), cols)


def read_colmap_text(folder: str | os.PathLike) -> CameraSet:
    """Read a COLMAP text model, images in IMAGE_ID order.

    Returns:
        :class:`CameraSet` with names, ``K`` ``[N, 3, 3]``, OpenCV ``c2w`` ``[N, 4, 4]``, image sizes and
        the points of ``points3D.txt`` (None when that file is missing). ``extras["image_ids"]`` and
        ``extras["camera_ids"]`` hold the COLMAP ids.
    """
    folder = Path(folder)
    for name in ("cameras.txt", "images.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"COLMAP model {folder}: {name} not found")
    cams = _read_cameras(folder / "cameras.txt")
    images = sorted(_read_images(folder / "images.txt"), key=lambda r: r[0])
    n = len(images)
    K = np.zeros((n, 3, 3))
    c2w = np.tile(np.eye(4), (n, 1, 1))
    sizes = np.zeros((n, 2), np.int64)
    for i, (iid, q, t, cid, _name) in enumerate(images):
        if cid not in cams:
            raise ValueError(f"COLMAP {folder / 'images.txt'}: image {iid} uses camera {cid}, not in cameras.txt "
                             f"(found ids {sorted(cams)})")
        K[i], sizes[i, 0], sizes[i, 1] = cams[cid]
        R = quat_wxyz_to_rotmat(q)  # w2c rotation
        c2w[i, :3, :3] = R.T
        c2w[i, :3, 3] = -R.T @ t
    pts_file = folder / "points3D.txt"
    points = _read_points(pts_file) if pts_file.is_file() else None
    return CameraSet(
        names=[r[4] for r in images], K=K, c2w=c2w, image_sizes=sizes, points=points,
        extras={"image_ids": [r[0] for r in images], "camera_ids": [r[3] for r in images]},
    )


def read_colmap_binary(folder: str | os.PathLike) -> CameraSet:
    """Read a COLMAP binary model (``cameras.bin``, ``images.bin``, ``points3D.bin``) with pycolmap
    (extra ``[sfm]``): converted to the text model in a temporary folder and read by
    :func:`read_colmap_text`, so both forms give the same :class:`CameraSet`.

    Raises:
        ImportError: pycolmap is missing (the message names the extra).
        ValueError: the model is corrupt or incomplete (naming the folder).
    """
    import tempfile

    folder = Path(folder)
    for name in ("cameras.bin", "images.bin"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"COLMAP model {folder}: {name} not found")
    try:
        import pycolmap
    except ImportError:
        raise ImportError(f"{folder}: reading a binary COLMAP model needs pycolmap: pip install 'forward3d[sfm]' "
                          "(or convert it: colmap model_converter --output_type TXT)") from None
    try:
        rec = pycolmap.Reconstruction()
        rec.read_binary(str(folder))
    except Exception as exc:  # pycolmap raises its own error types for damaged files
        raise ValueError(f"{folder}: corrupt or incomplete binary COLMAP model ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})") from None
    with tempfile.TemporaryDirectory(prefix="forward3d-colmap-") as tmp:
        rec.write_text(tmp)
        cams = read_colmap_text(tmp)
    if not (folder / "points3D.bin").is_file():
        cams.points = None
    return cams
