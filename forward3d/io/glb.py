"""glTF 2.0 binary (``.glb``) meshes and point clouds, and a minimal reader for them.

Axes: glTF is right-handed with +y up and the camera looking down -z (OpenGL style), while the
forward3d world frame is OpenCV-style (usually the first camera: x right, y down, z forward). With
``to_gltf_axes=True`` (the default) the writers map every position and normal ``(x, y, z)`` to
``(x, -y, -z)``, a 180 degree rotation about x: the scene keeps its handedness and triangle winding,
and a viewer shows it upright, looking the way the first camera looked. With ``False`` the world
coordinates are written unchanged. :func:`read_glb` undoes the mapping with ``from_gltf_axes=True``.

Layout written: one buffer (the BIN chunk), one bufferView per attribute (4-byte aligned),
``POSITION`` float32 VEC3 with ``min``/``max``, ``NORMAL`` float32 VEC3 when present, ``COLOR_0``
normalised unsigned byte VEC3 (byteStride 4, as the spec requires 4-byte aligned vertex elements)
when present, indices uint32 SCALAR; mode TRIANGLES (4) or POINTS (0); ``asset.version = "2.0"``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import numpy as np

from forward3d.io.atomic import atomic_write
from forward3d.types import Mesh, PointCloud

__all__ = ["write_glb", "write_glb_points", "read_glb", "glb_bytes"]

log = logging.getLogger(__name__)

_GLB_MAGIC = 0x46546C67  # b"glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_ARRAY_BUFFER = 34962
_ELEMENT_ARRAY_BUFFER = 34963
_COMPONENTS = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_FLIP = np.array([1.0, -1.0, -1.0], dtype=np.float32)


class _Builder:
    """Accumulates bufferViews/accessors into one binary buffer."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, data: np.ndarray, component: int, type_: str, target: int | None, *,
            normalized: bool = False, stride: int | None = None, minmax: bool = False) -> int:
        """Append ``data`` ([count, ncomp] or [count]) and return its accessor index."""
        data = np.ascontiguousarray(data)
        count = len(data)
        raw = data.tobytes()
        if stride is not None:  # pad each element to ``stride`` bytes
            elem = data.reshape(count, -1)
            padded = np.zeros((count, stride), dtype=np.uint8)
            padded[:, : elem.shape[1] * elem.itemsize] = elem.view(np.uint8).reshape(count, -1)
            raw = padded.tobytes()
        while len(self.blob) % 4:
            self.blob.append(0)
        view: dict = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(raw)}
        if stride is not None:
            view["byteStride"] = stride
        if target is not None:
            view["target"] = target
        self.blob += raw
        self.views.append(view)
        acc: dict = {"bufferView": len(self.views) - 1, "byteOffset": 0, "componentType": component,
                     "count": count, "type": type_}
        if normalized:
            acc["normalized"] = True
        if minmax:
            acc["min"] = data.reshape(count, -1).min(0).astype(float).tolist()
            acc["max"] = data.reshape(count, -1).max(0).astype(float).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _pad(b: bytes, fill: bytes) -> bytes:
    return b + fill * (-len(b) % 4)


def _encode(where: str, vertices: np.ndarray, normals: np.ndarray | None, colors: np.ndarray | None,
            faces: np.ndarray | None, to_gltf_axes: bool) -> bytes:
    """The bytes of a ``.glb`` holding one primitive (``where`` names the target in error messages)."""
    vertices = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    if not np.isfinite(vertices).all():
        raise ValueError(f"{where}: expected finite vertex positions, found NaN/inf")
    if to_gltf_axes:
        vertices = vertices * _FLIP
        normals = None if normals is None else np.asarray(normals, np.float32) * _FLIP
    b = _Builder()
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "forward3d"},
        "scene": 0,
        "scenes": [{}],  # an empty scene has no "nodes" (the spec wants at least one when present)
        "extras": {"forward3d_axes": "gltf (x, -y, -z) of OpenCV world" if to_gltf_axes else "OpenCV world"},
    }
    if len(vertices):
        attrs = {"POSITION": b.add(vertices, 5126, "VEC3", _ARRAY_BUFFER, minmax=True)}
        if normals is not None:
            attrs["NORMAL"] = b.add(np.asarray(normals, np.float32), 5126, "VEC3", _ARRAY_BUFFER)
        if colors is not None:
            attrs["COLOR_0"] = b.add(np.asarray(colors, np.uint8), 5121, "VEC3", _ARRAY_BUFFER,
                                     normalized=True, stride=4)
        prim: dict = {"attributes": attrs, "mode": 0}
        if faces is not None and len(faces):
            if len(vertices) > np.iinfo(np.uint32).max:
                raise ValueError(f"{where}: too many vertices for uint32 indices: {len(vertices)}")
            prim["indices"] = b.add(np.asarray(faces, np.uint32).reshape(-1), 5125, "SCALAR", _ELEMENT_ARRAY_BUFFER)
            prim["mode"] = 4
        gltf["meshes"] = [{"primitives": [prim]}]
        gltf["nodes"] = [{"mesh": 0}]
        gltf["scenes"][0]["nodes"] = [0]
        gltf["accessors"] = b.accessors
        gltf["bufferViews"] = b.views
        gltf["buffers"] = [{"byteLength": len(_pad(bytes(b.blob), b"\x00"))}]
    json_chunk = _pad(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = _pad(bytes(b.blob), b"\x00")
    total = 12 + 8 + len(json_chunk) + (8 + len(bin_chunk) if bin_chunk else 0)
    out = bytearray(struct.pack("<III", _GLB_MAGIC, 2, total))
    out += struct.pack("<II", len(json_chunk), _CHUNK_JSON) + json_chunk
    if bin_chunk:
        out += struct.pack("<II", len(bin_chunk), _CHUNK_BIN) + bin_chunk
    return bytes(out)


def _write(path: Path, vertices: np.ndarray, normals: np.ndarray | None, colors: np.ndarray | None,
           faces: np.ndarray | None, to_gltf_axes: bool, what: str) -> Path:
    data = _encode(f"{what} {path}", vertices, normals, colors, faces, to_gltf_axes)
    with atomic_write(path, "wb") as f:
        f.write(data)
    log.debug("wrote %s (%d vertices) to %s", what, len(vertices), path)
    return path


def glb_bytes(geometry: Mesh | PointCloud, to_gltf_axes: bool = True) -> bytes:
    """The ``.glb`` file content of a mesh (TRIANGLES) or point cloud (POINTS), in memory (for viewers
    and downloads); the same bytes :func:`write_glb` / :func:`write_glb_points` write."""
    if isinstance(geometry, Mesh):
        return _encode("glb_bytes", geometry.vertices, geometry.vertex_normals, geometry.vertex_colors,
                       geometry.faces, to_gltf_axes)
    if isinstance(geometry, PointCloud):
        return _encode("glb_bytes", geometry.points, geometry.normals, geometry.colors, None, to_gltf_axes)
    raise TypeError(f"glb_bytes: expected a Mesh or PointCloud, found {type(geometry).__name__}")


def write_glb(path: str | os.PathLike, mesh: Mesh, to_gltf_axes: bool = True) -> Path:
    """Write a triangle mesh as glTF 2.0 binary.

    Args:
        path: target ``.glb`` file.
        mesh: vertices ``[V, 3]``, faces ``[F, 3]`` (CCW), optional colours ``[V, 3]`` uint8, normals.
            A mesh with no faces is written as a POINTS primitive; one with no vertices as an empty scene.
        to_gltf_axes: map OpenCV world ``(x, y, z)`` to glTF ``(x, -y, -z)`` (see module docstring).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"write_glb {path}: expected a Mesh, found {type(mesh).__name__}")
    return _write(path, mesh.vertices, mesh.vertex_normals, mesh.vertex_colors, mesh.faces, to_gltf_axes, "write_glb")


def write_glb_points(path: str | os.PathLike, pc: PointCloud, to_gltf_axes: bool = True) -> Path:
    """Write a point cloud as a glTF 2.0 binary POINTS primitive (same axes rule as :func:`write_glb`)."""
    path = Path(path)
    if not isinstance(pc, PointCloud):
        raise TypeError(f"write_glb_points {path}: expected a PointCloud, found {type(pc).__name__}")
    return _write(path, pc.points, pc.normals, pc.colors, None, to_gltf_axes, "write_glb_points")


# --------------------------------------------------------------------------------------------------
# Minimal reader (our own files and simple single-mesh GLBs; node transforms are ignored)
# --------------------------------------------------------------------------------------------------


def _parse_glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    if len(data) < 20:
        raise ValueError(f"GLB {path}: expected at least a 20-byte header, found {len(data)} bytes")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise ValueError(f"GLB {path}: expected magic 'glTF' version 2, found {data[:4]!r} version {version}")
    if length != len(data):
        raise ValueError(f"GLB {path}: header length {length} does not match file size {len(data)}")
    pos, gltf, binary = 12, None, b""
    while pos + 8 <= len(data):
        clen, ctype = struct.unpack_from("<II", data, pos)
        chunk = data[pos + 8: pos + 8 + clen]
        if len(chunk) != clen:
            raise ValueError(f"GLB {path}: truncated chunk at offset {pos}: expected {clen} bytes, found {len(chunk)}")
        if ctype == _CHUNK_JSON and gltf is None:
            gltf = json.loads(chunk.decode("utf-8"))
        elif ctype == _CHUNK_BIN and not binary:
            binary = chunk
        pos += 8 + clen
    if gltf is None:
        raise ValueError(f"GLB {path}: no JSON chunk found")
    return gltf, binary


def _accessor(path: Path, gltf: dict, binary: bytes, index: int, normalize: bool = True) -> np.ndarray:
    acc = gltf["accessors"][index]
    if "sparse" in acc or "bufferView" not in acc:
        raise ValueError(f"GLB {path}: accessor {index}: sparse / view-less accessors are not supported")
    view = gltf["bufferViews"][acc["bufferView"]]
    if view.get("buffer", 0) != 0 or "uri" in gltf["buffers"][view.get("buffer", 0)]:
        raise ValueError(f"GLB {path}: accessor {index}: only the embedded BIN buffer is supported")
    dt = np.dtype(_COMPONENTS[acc["componentType"]])
    ncomp = _NCOMP[acc["type"]]
    count = acc["count"]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    elem = dt.itemsize * ncomp
    stride = view.get("byteStride", elem) or elem
    need = start + stride * (count - 1) + elem if count else start
    if need > len(binary):
        raise ValueError(f"GLB {path}: accessor {index} needs {need} bytes, BIN chunk has {len(binary)}")
    raw = np.frombuffer(binary, np.uint8, need - start, start) if count else np.zeros(0, np.uint8)
    if stride == elem:
        out = raw.view(dt).reshape(count, ncomp)
    else:
        rows = np.lib.stride_tricks.as_strided(raw, (count, elem), (stride, 1))
        out = np.ascontiguousarray(rows).view(dt).reshape(count, ncomp)
    if normalize and acc.get("normalized"):
        out = out.astype(np.float32) / float(np.iinfo(dt).max)
    return out


def read_glb(path: str | os.PathLike, from_gltf_axes: bool = True) -> Mesh:
    """Read the first primitive of the first mesh of a ``.glb`` as a :class:`Mesh`.

    Triangles (mode 4) give faces; points (mode 0) give a mesh with no faces. Colours are converted to
    uint8 (alpha dropped). Node transforms, textures and other primitives are ignored.

    Args:
        from_gltf_axes: map glTF ``(x, y, z)`` back to OpenCV world ``(x, -y, -z)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLB file not found: {path}")
    gltf, binary = _parse_glb(path)
    meshes = gltf.get("meshes", [])
    if not meshes:
        return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    prim = meshes[0]["primitives"][0]
    mode = prim.get("mode", 4)
    if mode not in (0, 4):
        raise ValueError(f"GLB {path}: expected primitive mode 4 (triangles) or 0 (points), found {mode}")
    attrs = prim["attributes"]
    vertices = _accessor(path, gltf, binary, attrs["POSITION"]).astype(np.float32)
    normals = _accessor(path, gltf, binary, attrs["NORMAL"]).astype(np.float32) if "NORMAL" in attrs else None
    colors = None
    if "COLOR_0" in attrs:
        c = _accessor(path, gltf, binary, attrs["COLOR_0"], normalize=False)[:, :3]
        if c.dtype == np.uint8:
            colors = c.copy()
        elif c.dtype == np.uint16:
            colors = (c >> 8).astype(np.uint8)
        else:
            colors = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
    if mode == 4:
        if "indices" in prim:
            faces = _accessor(path, gltf, binary, prim["indices"]).astype(np.int64).reshape(-1, 3)
        else:
            faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
    else:
        faces = np.zeros((0, 3), np.int64)
    if from_gltf_axes:
        vertices = vertices * _FLIP
        normals = None if normals is None else normals * _FLIP
    return Mesh(vertices, faces, colors, normals)
