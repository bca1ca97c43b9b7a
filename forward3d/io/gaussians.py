"""3D Gaussian files: the standard 3DGS PLY and the 32-byte ``.splat`` format.

3DGS PLY (what SuperSplat, viser's loaders, gradio ``Model3D`` and most viewers read), binary
little-endian float32 vertex properties in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3*(K-1)-1} opacity scale_0..2 rot_0..3

- colour = 0.5 + C0 * f_dc; ``opacity`` is a logit; ``scale_*`` are logs; ``rot`` is a wxyz quaternion.
- ``f_rest`` is channel-major on disk (all K-1 coefficients of R, then G, then B), while
  :class:`~forward3d.types.Gaussians` keeps ``sh`` as ``[N, K, 3]`` (coefficient-major, RGB last).

``.splat`` (antimatter15 web viewer), 32 bytes per Gaussian: position 3 x f32, scale 3 x f32
(already exp), RGBA u8 (RGB = 0.5 + C0 f_dc, A = sigmoid(opacity), x255, clipped), rotation 4 x u8 =
q * 128 + 128 (wxyz, normalised). No SH. Sorted by ``-exp(sum log s) * sigmoid(o)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from forward3d.io.atomic import atomic_write
from forward3d.types import SH_C0, Gaussians

logger = logging.getLogger(__name__)

__all__ = ["write_gaussians_ply", "read_gaussians_ply", "write_splat", "read_splat", "read_gaussians", "write_gaussians"]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _ply_property_names(k: int) -> list[str]:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def _to_numpy(g: Gaussians) -> dict[str, np.ndarray]:
    g = g.detach().to("cpu", torch.float32)
    return {
        "means": g.means.numpy(), "quats": g.quats.numpy(), "log_scales": g.log_scales.numpy(),
        "opacity_logits": g.opacity_logits.numpy(), "sh": g.sh.numpy(),
    }


def write_gaussians_ply(path: str | os.PathLike, gaussians: Gaussians, normals: np.ndarray | None = None) -> None:
    """Write ``gaussians`` as a standard binary little-endian 3DGS PLY (atomic)."""
    a = _to_numpy(gaussians)
    n, k = a["sh"].shape[:2]
    names = _ply_property_names(k)
    data = np.empty((n, len(names)), dtype="<f4")
    data[:, 0:3] = a["means"]
    data[:, 3:6] = 0.0 if normals is None else np.asarray(normals, np.float32).reshape(n, 3)
    data[:, 6:9] = a["sh"][:, 0, :]
    if k > 1:
        # [N, K-1, 3] coefficient-major -> channel-major [N, 3, K-1] flattened
        data[:, 9:9 + 3 * (k - 1)] = a["sh"][:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    o = 9 + 3 * (k - 1)
    data[:, o] = a["opacity_logits"]
    data[:, o + 1:o + 4] = a["log_scales"]
    data[:, o + 4:o + 8] = a["quats"]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header += ["end_header"]
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())


def _parse_ply_header(path: Path, raw: bytes) -> tuple[str, int, list[tuple[str, str]], int]:
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    nl = raw.find(b"\n", end)
    if nl < 0:
        raise ValueError(f"{path}: truncated PLY header")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt, count, props, in_vertex = "", -1, [], False
    for line in lines:
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            in_vertex = tok[1] == "vertex"
            if in_vertex:
                count = int(tok[2])
            elif count < 0:
                raise ValueError(f"{path}: element '{tok[1]}' before 'vertex' is not supported for Gaussians")
        elif tok[0] == "property" and in_vertex:
            if tok[1] == "list":
                raise ValueError(f"{path}: list property '{tok[-1]}' in vertex element is not supported")
            if tok[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown PLY property type '{tok[1]}'")
            props.append((tok[2], _PLY_TYPES[tok[1]]))
    if count < 0:
        raise ValueError(f"{path}: PLY has no vertex element")
    return fmt, count, props, nl + 1


def read_gaussians_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (with or without normals, any SH degree 0..3, LE/BE binary or ASCII)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    raw = p.read_bytes()
    fmt, n, props, offset = _parse_ply_header(p, raw)
    names = [name for name, _ in props]
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [r for r in required if r not in names]
    if missing:
        raise ValueError(f"{p}: not a 3D Gaussian PLY: missing vertex properties {missing}")
    if fmt == "ascii":
        try:
            table = np.loadtxt(raw[offset:].decode("ascii").splitlines()[:n], dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{p}: malformed ASCII PLY body ({exc})") from exc
        if table.shape != (n, len(props)):
            raise ValueError(f"{p}: expected {n} rows of {len(props)} values, found {table.shape}")
        cols = {name: table[:, i] for i, name in enumerate(names)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + t) for name, t in props])
        need = n * dtype.itemsize
        if len(raw) - offset < need:
            raise ValueError(f"{p}: truncated PLY: {n} vertices need {need} bytes, found {len(raw) - offset}")
        arr = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
        cols = {name: arr[name].astype(np.float64) for name in names}
    else:
        raise ValueError(f"{p}: unsupported PLY format '{fmt}'")
    n_rest = sum(1 for name in names if name.startswith("f_rest_"))
    if n_rest % 3 or int(round(np.sqrt(n_rest // 3 + 1))) ** 2 != n_rest // 3 + 1:
        raise ValueError(f"{p}: {n_rest} f_rest properties do not match an SH degree 0..3 (expected 0, 9, 24 or 45)")
    k = n_rest // 3 + 1
    stack = lambda keys: np.stack([cols[key] for key in keys], -1).astype(np.float32)  # noqa: E731
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    if k > 1:
        rest = stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1)
        sh[:, 1:] = rest.transpose(0, 2, 1)
    quats = stack(["rot_0", "rot_1", "rot_2", "rot_3"])
    norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    quats = np.where(norm > 0, quats / np.maximum(norm, 1e-12), np.array([1, 0, 0, 0], np.float32))
    t = torch.from_numpy
    g = Gaussians(t(stack(["x", "y", "z"])), t(quats), t(stack(["scale_0", "scale_1", "scale_2"])),
                  t(cols["opacity"].astype(np.float32)), t(sh))
    return _drop_non_finite(g, p)


def _drop_non_finite(g: Gaussians, path: Path) -> Gaussians:
    """Drop Gaussians with a NaN/inf parameter (real trainers' files have them): one would make the
    scene centre NaN (black orbit renders) and can poison the compositing. Logged with the count."""
    ok = torch.ones(len(g), dtype=torch.bool)
    for x in (g.means, g.quats, g.log_scales, g.sh):
        ok &= torch.isfinite(x.reshape(len(g), -1)).all(-1)
    # opacity logit +inf is a valid "opaque"; NaN / -inf (never visible) are not
    ok &= ~torch.isnan(g.opacity_logits)
    n_bad = int((~ok).sum())
    if n_bad == 0:
        return g
    if n_bad == len(g):
        raise ValueError(f"{path}: all {len(g)} Gaussians have non-finite parameters (NaN/inf)")
    logger.warning("%s: dropping %d of %d Gaussians with non-finite parameters (NaN/inf)", path, n_bad, len(g))
    return g.subset(ok)


def write_splat(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write the antimatter15 ``.splat`` format (32 bytes per Gaussian, sorted by size x opacity)."""
    a = _to_numpy(gaussians)
    n = len(a["means"])
    scales = np.exp(a["log_scales"])
    opac = 1.0 / (1.0 + np.exp(-a["opacity_logits"].astype(np.float64)))
    order = np.argsort(-np.exp(a["log_scales"].astype(np.float64).sum(-1)) * opac, kind="stable")
    rgb = 0.5 + SH_C0 * a["sh"][:, 0, :]
    rgba = np.concatenate([rgb, opac[:, None]], -1)
    rgba = np.clip(rgba * 255.0, 0, 255).astype(np.uint8)
    q = a["quats"] / np.maximum(np.linalg.norm(a["quats"], axis=-1, keepdims=True), 1e-12)
    rot = np.clip(q * 128.0 + 128.0, 0, 255).astype(np.uint8)
    rec = np.empty(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"], rec["scale"], rec["rgba"], rec["rot"] = a["means"], scales, rgba, rot
    with atomic_write(path, "wb") as f:
        f.write(rec[order].tobytes())


def read_splat(path: str | os.PathLike) -> Gaussians:
    """Read a ``.splat`` file (SH degree 0; quantised colours, opacities and rotations)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    raw = p.read_bytes()
    if len(raw) == 0 or len(raw) % 32:
        raise ValueError(f"{p}: a .splat file holds 32-byte records; size {len(raw)} is not a positive multiple of 32")
    rec = np.frombuffer(raw, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rgba = rec["rgba"].astype(np.float32) / 255.0
    q = (rec["rot"].astype(np.float32) - 128.0) / 128.0
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    o = np.clip(rgba[:, 3], 1e-4, 1 - 1e-4)
    t = torch.from_numpy
    g = Gaussians(
        t(rec["pos"].astype(np.float32)), t(q.astype(np.float32)),
        t(np.log(np.maximum(rec["scale"].astype(np.float32), 1e-12))),
        t((np.log(o) - np.log1p(-o)).astype(np.float32)),
        t(((rgba[:, :3] - 0.5) / SH_C0)[:, None, :].astype(np.float32)),
    )
    return _drop_non_finite(g, p)


def read_gaussians(path: str | os.PathLike) -> Gaussians:
    """Read ``.ply`` or ``.splat`` by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return read_gaussians_ply(path)
    if suffix == ".splat":
        return read_splat(path)
    raise ValueError(f"{path}: unknown Gaussian file type '{suffix}' (expected .ply or .splat)")


def write_gaussians(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write ``.ply`` or ``.splat`` by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        write_gaussians_ply(path, gaussians)
    elif suffix == ".splat":
        write_splat(path, gaussians)
    else:
        raise ValueError(f"{path}: unknown Gaussian file type '{suffix}' (expected .ply or .splat)")
