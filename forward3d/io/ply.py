"""PLY point clouds and triangle meshes.

Writers produce ``binary_little_endian 1.0`` files:

- point cloud: ``vertex`` with ``x y z`` (float32), ``nx ny nz`` (float32) when normals are present,
  ``red green blue`` (uchar) when colours are present;
- mesh: the same vertex element plus ``face`` with ``property list uchar int vertex_indices``.

Readers accept ``binary_little_endian``, ``binary_big_endian`` and ``ascii``; float or double
coordinates; uchar (0..255), other integer, or float (0..1) colours; optional normals; and ignore
any other property or element (so a 3D Gaussian Splatting PLY reads as its centres, with colours
from the ``f_dc_*`` SH DC terms when there are no ``red green blue``; all-zero ``nx ny nz``
placeholders are read as "no normals"). Faces may be polygons; they
are fan-triangulated. Everything is vectorised with numpy structured dtypes except files whose
list elements have varying lengths (polygon meshes), which take a slower per-face path.

Coordinates are written as they are (forward3d world frame, OpenCV-style, metres).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forward3d.io.atomic import atomic_write
from forward3d.types import SH_C0, Mesh, PointCloud

__all__ = ["write_point_cloud", "read_point_cloud", "write_mesh_ply", "read_mesh_ply", "ply_elements", "ply_kind"]

log = logging.getLogger(__name__)

_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER = 1 << 20


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _vertex_struct(points: np.ndarray, normals: np.ndarray | None, colors: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Pack vertices into a little-endian structured array; return it and its header lines."""
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    arr = np.empty(len(points), dtype=np.dtype(fields))
    for i, name in enumerate("xyz"):
        arr[name] = points[:, i]
    if normals is not None:
        for i, name in enumerate(("nx", "ny", "nz")):
            arr[name] = normals[:, i]
    if colors is not None:
        for i, name in enumerate(("red", "green", "blue")):
            arr[name] = colors[:, i]
    ply_names = {"<f4": "float", "u1": "uchar"}
    header = [f"element vertex {len(points)}"] + [f"property {ply_names[t]} {n}" for n, t in fields]
    return arr, header


def _check_finite_colors(what: str, path: Path, colors: np.ndarray | None) -> None:
    if colors is not None and colors.dtype != np.uint8:
        raise ValueError(f"{what} {path}: expected uint8 colours, found {colors.dtype}")


def write_point_cloud(path: str | os.PathLike, pc: PointCloud) -> Path:
    """Write ``pc`` as a binary little-endian PLY (atomically).

    Args:
        path: target file (parent folders are created).
        pc: points ``[N, 3]`` float32, optional normals ``[N, 3]``, optional colours ``[N, 3]`` uint8.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    if not isinstance(pc, PointCloud):
        raise TypeError(f"write_point_cloud {path}: expected a PointCloud, found {type(pc).__name__}")
    _check_finite_colors("write_point_cloud", path, pc.colors)
    arr, header = _vertex_struct(pc.points, pc.normals, pc.colors)
    text = "ply\nformat binary_little_endian 1.0\ncomment forward3d point cloud\n" + "\n".join(header) + "\nend_header\n"
    with atomic_write(path, "wb") as f:
        f.write(text.encode("ascii"))
        f.write(arr.tobytes())
    log.debug("wrote %d points to %s", len(pc), path)
    return path


def write_mesh_ply(path: str | os.PathLike, mesh: Mesh) -> Path:
    """Write ``mesh`` as a binary little-endian PLY: vertices (+normals, +colours) and int32 faces.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"write_mesh_ply {path}: expected a Mesh, found {type(mesh).__name__}")
    if len(mesh.vertices) > np.iinfo(np.int32).max:
        raise ValueError(f"write_mesh_ply {path}: {len(mesh.vertices)} vertices do not fit int32 indices")
    arr, header = _vertex_struct(mesh.vertices, mesh.vertex_normals, mesh.vertex_colors)
    faces = np.empty(len(mesh.faces), dtype=np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    faces["n"] = 3
    faces["v"] = mesh.faces
    header += [f"element face {len(mesh.faces)}", "property list uchar int vertex_indices"]
    text = "ply\nformat binary_little_endian 1.0\ncomment forward3d mesh\n" + "\n".join(header) + "\nend_header\n"
    with atomic_write(path, "wb") as f:
        f.write(text.encode("ascii"))
        f.write(arr.tobytes())
        f.write(faces.tobytes())
    log.debug("wrote mesh (%d vertices, %d faces) to %s", len(mesh.vertices), len(mesh.faces), path)
    return path


# --------------------------------------------------------------------------------------------------
# Header parsing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Prop:
    name: str
    dtype: str  # numpy kind+size, e.g. "f4"
    count_dtype: str | None = None  # set for list properties


@dataclass
class _Element:
    name: str
    count: int
    props: list[_Prop]


def _parse_header(path: Path, data: bytes) -> tuple[str | None, list[_Element], int]:
    """Return (byte order or None for ascii, elements, offset of the body)."""
    if not data.startswith(b"ply"):
        raise ValueError(f"PLY {path}: expected the magic 'ply' at the start, found {data[:8]!r}")
    end = data.find(b"end_header", 0, _MAX_HEADER)
    if end < 0:
        raise ValueError(f"PLY {path}: no 'end_header' line found in the first {_MAX_HEADER} bytes")
    nl = data.find(b"\n", end)
    body = len(data) if nl < 0 else nl + 1
    try:
        lines = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"PLY {path}: header is not ASCII ({e})") from None
    fmt: str | None = None
    order: str | None = None
    elements: list[_Element] = []
    for lineno, raw in enumerate(lines[1:], start=2):
        tok = raw.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        where = f"PLY {path}, header line {lineno}"
        if tok[0] == "format":
            if len(tok) < 2 or tok[1] not in _FORMATS:
                raise ValueError(f"{where}: expected format ascii|binary_little_endian|binary_big_endian, found {raw!r}")
            fmt, order = tok[1], _FORMATS[tok[1]]
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise ValueError(f"{where}: expected 'element <name> <count>', found {raw!r}")
            elements.append(_Element(tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{where}: property before any element: {raw!r}")
            if len(tok) == 5 and tok[1] == "list":
                if tok[2] not in _PLY_TYPES or tok[3] not in _PLY_TYPES or _PLY_TYPES[tok[2]][0] == "f":
                    raise ValueError(f"{where}: unsupported list types in {raw!r}")
                elements[-1].props.append(_Prop(tok[4], _PLY_TYPES[tok[3]], _PLY_TYPES[tok[2]]))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1].props.append(_Prop(tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise ValueError(f"{where}: expected 'property <type> <name>' or 'property list <t> <t> <name>' "
                                 f"with types {sorted(_PLY_TYPES)}, found {raw!r}")
        else:
            raise ValueError(f"{where}: unknown header keyword {tok[0]!r}")
    if fmt is None:
        raise ValueError(f"PLY {path}: header has no 'format' line")
    return order, elements, body


# --------------------------------------------------------------------------------------------------
# Body parsing. Each element becomes {prop name: array}; list props become (counts [N], flat values).
# --------------------------------------------------------------------------------------------------

_Columns = dict[str, "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def _read_binary(path: Path, order: str, elements: list[_Element], data: bytes, pos: int) -> dict[str, _Columns]:
    out: dict[str, _Columns] = {}
    for el in elements:
        lists = [p for p in el.props if p.count_dtype is not None]
        if not lists:
            dt = np.dtype([(f"p{i}", order + p.dtype) for i, p in enumerate(el.props)])
            nbytes = dt.itemsize * el.count
            if pos + nbytes > len(data):
                raise ValueError(f"PLY {path}: truncated element {el.name!r}: expected {nbytes} bytes at offset "
                                 f"{pos}, found {len(data) - pos}")
            arr = np.frombuffer(data, dtype=dt, count=el.count, offset=pos)
            out[el.name] = {p.name: arr[f"p{i}"] for i, p in enumerate(el.props)}
            pos += nbytes
            continue
        cols = _read_binary_fixed_lists(path, order, el, data, pos)
        if cols is None:
            cols, pos = _read_binary_walk(path, order, el, data, pos)
        else:
            cols, pos = cols
        out[el.name] = cols
    return out


def _read_binary_fixed_lists(path: Path, order: str, el: _Element, data: bytes, pos: int):
    """Fast path: assume every list in ``el`` has the length of the first row's. None if not so."""
    if el.count == 0:
        return {p.name: ((np.zeros(0, np.int64), np.zeros(0, p.dtype)) if p.count_dtype else np.zeros(0, p.dtype))
                for p in el.props}, pos
    fields, lengths, off = [], [], pos
    for i, p in enumerate(el.props):
        if p.count_dtype is None:
            fields.append((f"p{i}", order + p.dtype))
            off += np.dtype(p.dtype).itemsize
            continue
        cdt = np.dtype(order + p.count_dtype)
        if off + cdt.itemsize > len(data):
            raise ValueError(f"PLY {path}: truncated element {el.name!r} at offset {off}")
        k = int(np.frombuffer(data, dtype=cdt, count=1, offset=off)[0])
        if k < 0:
            return None
        fields += [(f"c{i}", cdt.str), (f"p{i}", order + p.dtype, (k,))]
        lengths.append(k)
        off += cdt.itemsize + k * np.dtype(p.dtype).itemsize
    dt = np.dtype(fields)
    if pos + dt.itemsize * el.count > len(data):
        return None  # maybe varying lengths: let the walker decide (and report truncation)
    arr = np.frombuffer(data, dtype=dt, count=el.count, offset=pos)
    cols: _Columns = {}
    for i, p in enumerate(el.props):
        if p.count_dtype is None:
            cols[p.name] = arr[f"p{i}"]
        else:
            counts = arr[f"c{i}"].astype(np.int64)
            if not np.all(counts == counts[0]):
                return None
            cols[p.name] = (counts, arr[f"p{i}"].reshape(-1))
    return cols, pos + dt.itemsize * el.count


def _read_binary_walk(path: Path, order: str, el: _Element, data: bytes, pos: int):
    """Slow path for lists of varying length: one row at a time."""
    scalars: dict[str, list] = {p.name: [] for p in el.props if p.count_dtype is None}
    counts: dict[str, list[int]] = {p.name: [] for p in el.props if p.count_dtype is not None}
    values: dict[str, list[np.ndarray]] = {p.name: [] for p in el.props if p.count_dtype is not None}
    n = len(data)
    for _ in range(el.count):
        for p in el.props:
            if p.count_dtype is None:
                dt = np.dtype(order + p.dtype)
                if pos + dt.itemsize > n:
                    raise ValueError(f"PLY {path}: truncated element {el.name!r} at offset {pos}")
                scalars[p.name].append(np.frombuffer(data, dt, 1, pos)[0])
                pos += dt.itemsize
                continue
            cdt, vdt = np.dtype(order + p.count_dtype), np.dtype(order + p.dtype)
            if pos + cdt.itemsize > n:
                raise ValueError(f"PLY {path}: truncated element {el.name!r} at offset {pos}")
            k = int(np.frombuffer(data, cdt, 1, pos)[0])
            pos += cdt.itemsize
            if k < 0 or pos + k * vdt.itemsize > n:
                raise ValueError(f"PLY {path}: truncated or corrupt list {p.name!r} in element {el.name!r} at offset {pos}")
            counts[p.name].append(k)
            values[p.name].append(np.frombuffer(data, vdt, k, pos))
            pos += k * vdt.itemsize
    cols: _Columns = {}
    for p in el.props:
        if p.count_dtype is None:
            cols[p.name] = np.asarray(scalars[p.name], dtype=p.dtype)
        else:
            flat = np.concatenate(values[p.name]) if values[p.name] else np.zeros(0, p.dtype)
            cols[p.name] = (np.asarray(counts[p.name], dtype=np.int64), flat)
    return cols, pos


def _read_ascii(path: Path, elements: list[_Element], data: bytes, pos: int) -> dict[str, _Columns]:
    tokens = data[pos:].split()
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"PLY {path}: non-numeric value in ASCII body ({e})") from None
    t = 0
    out: dict[str, _Columns] = {}
    for el in elements:
        lists = [p for p in el.props if p.count_dtype is not None]
        if not lists:
            need = el.count * len(el.props)
            if t + need > len(values):
                raise ValueError(f"PLY {path}: truncated element {el.name!r}: expected {need} values, "
                                 f"found {len(values) - t}")
            block = values[t:t + need].reshape(el.count, len(el.props))
            out[el.name] = {p.name: block[:, i].astype(p.dtype) for i, p in enumerate(el.props)}
            t += need
            continue
        cols: _Columns = {p.name: [] for p in el.props}  # type: ignore[misc]
        lens: dict[str, list[int]] = {p.name: [] for p in lists}
        # fast path when all rows have the first row's list lengths
        stride, k_first, ok = 0, [], el.count > 0
        tt = t
        for p in el.props:
            if p.count_dtype is None:
                tt += 1
                stride += 1
            else:
                if tt >= len(values):
                    ok = False
                    break
                k = int(values[tt])
                k_first.append(k)
                tt += 1 + k
                stride += 1 + k
        if ok and t + stride * el.count <= len(values):
            block = values[t:t + stride * el.count].reshape(el.count, stride)
            c, li = 0, 0
            same = True
            for p in el.props:
                if p.count_dtype is None:
                    c += 1
                    continue
                same &= bool(np.all(block[:, c] == k_first[li]))
                c += 1 + k_first[li]
                li += 1
            if same:
                c, li = 0, 0
                for p in el.props:
                    if p.count_dtype is None:
                        cols[p.name] = block[:, c].astype(p.dtype)
                        c += 1
                    else:
                        k = k_first[li]
                        cols[p.name] = (np.full(el.count, k, np.int64), block[:, c + 1:c + 1 + k].reshape(-1).astype(p.dtype))
                        c += 1 + k
                        li += 1
                out[el.name] = cols
                t += stride * el.count
                continue
        for _ in range(el.count):
            for p in el.props:
                if t >= len(values):
                    raise ValueError(f"PLY {path}: truncated element {el.name!r} in ASCII body")
                if p.count_dtype is None:
                    cols[p.name].append(values[t])  # type: ignore[union-attr]
                    t += 1
                else:
                    k = int(values[t])
                    if k < 0 or t + 1 + k > len(values):
                        raise ValueError(f"PLY {path}: truncated or corrupt list {p.name!r} in element {el.name!r}")
                    lens[p.name].append(k)
                    cols[p.name].append(values[t + 1:t + 1 + k])  # type: ignore[union-attr]
                    t += 1 + k
        for p in el.props:
            if p.count_dtype is None:
                cols[p.name] = np.asarray(cols[p.name], dtype=p.dtype)
            else:
                parts = cols[p.name]
                flat = np.concatenate(parts).astype(p.dtype) if parts else np.zeros(0, p.dtype)
                cols[p.name] = (np.asarray(lens[p.name], np.int64), flat)
        out[el.name] = cols
    return out


def ply_elements(path: str | os.PathLike) -> dict[str, tuple[int, list[str]]]:
    """The elements a PLY header declares, reading only the header: ``{name: (count, [property names])}``.

    Raises:
        FileNotFoundError, or ValueError naming the file when the header is not a valid PLY header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    _, elements, _ = _parse_header(path, head)
    return {el.name: (el.count, [p.name for p in el.props]) for el in elements}


_GAUSSIAN_PROPS = ("f_dc_0", "opacity", "scale_0", "rot_0")


def ply_kind(path: str | os.PathLike) -> str:
    """What a PLY file holds, from its header: ``"gaussians"`` (3DGS properties ``f_dc_0 opacity
    scale_0 rot_0``), ``"mesh"`` (a non-empty ``face`` element) or ``"points"``."""
    elements = ply_elements(path)
    if "vertex" not in elements:
        raise ValueError(f"PLY {path}: expected a 'vertex' element, found {sorted(elements)}")
    props = set(elements["vertex"][1])
    if all(p in props for p in _GAUSSIAN_PROPS):
        return "gaussians"
    if elements.get("face", (0, []))[0] > 0:
        return "mesh"
    return "points"


def _read_ply(path: str | os.PathLike) -> dict[str, _Columns]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    data = path.read_bytes()
    order, elements, pos = _parse_header(path, data)
    if order is None:
        return _read_ascii(path, elements, data, pos)
    return _read_binary(path, order, elements, data, pos)


# --------------------------------------------------------------------------------------------------
# Interpreting the columns
# --------------------------------------------------------------------------------------------------


def _stack(cols: _Columns, names: tuple[str, ...], dtype) -> np.ndarray | None:
    if not all(n in cols and not isinstance(cols[n], tuple) for n in names):
        return None
    return np.stack([np.asarray(cols[n]).astype(dtype, copy=False) for n in names], axis=1)


def _to_uint8(c: np.ndarray) -> np.ndarray:
    if c.dtype == np.uint8:
        return np.ascontiguousarray(c)
    if c.dtype.kind == "f":
        return (np.clip(np.nan_to_num(c), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.clip(c, 0, 255).astype(np.uint8)


def _vertices(path: Path, elements: dict[str, _Columns]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if "vertex" not in elements:
        raise ValueError(f"PLY {path}: expected a 'vertex' element, found {sorted(elements) or 'none'}")
    v = elements["vertex"]
    points = _stack(v, ("x", "y", "z"), np.float32)
    if points is None:
        raise ValueError(f"PLY {path}: expected scalar vertex properties x y z, found {sorted(v)}")
    normals = _stack(v, ("nx", "ny", "nz"), np.float32)
    if normals is not None and len(normals) and not normals.any():
        normals = None  # all-zero placeholders (3DGS files, some exporters) carry no normals
    colors = None
    for names in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(n in v for n in names):
            raw = np.stack([np.asarray(v[n]) for n in names], axis=1)
            colors = _to_uint8(raw)
            break
    if colors is None and all(f"f_dc_{i}" in v for i in range(3)):  # 3D Gaussian Splatting PLY
        dc = _stack(v, ("f_dc_0", "f_dc_1", "f_dc_2"), np.float32)
        colors = _to_uint8(0.5 + SH_C0 * dc)
    return points, normals, colors


def read_point_cloud(path: str | os.PathLike) -> PointCloud:
    """Read the vertices of any PLY file as a :class:`PointCloud`.

    Returns:
        points ``[N, 3]`` float32; colours ``[N, 3]`` uint8 or None; normals ``[N, 3]`` float32 or None.
    """
    path = Path(path)
    points, normals, colors = _vertices(path, _read_ply(path))
    return PointCloud(points, colors, normals)


def read_mesh_ply(path: str | os.PathLike) -> Mesh:
    """Read a PLY triangle (or polygon, fan-triangulated) mesh.

    Returns:
        :class:`Mesh` with int64 faces ``[F, 3]`` (a file with no ``face`` element gives ``F = 0``).
    """
    path = Path(path)
    elements = _read_ply(path)
    vertices, normals, colors = _vertices(path, elements)
    faces = np.zeros((0, 3), np.int64)
    if "face" in elements:
        f = elements["face"]
        key = next((k for k in ("vertex_indices", "vertex_index") if k in f and isinstance(f[k], tuple)), None)
        if key is None:
            raise ValueError(f"PLY {path}: expected a list property 'vertex_indices' in element 'face', found {sorted(f)}")
        counts, flat = f[key]
        faces = _triangulate(path, counts, flat.astype(np.int64))
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"PLY {path}: face indices must be in [0, {len(vertices)}), found "
                         f"[{faces.min()}, {faces.max()}]")
    return Mesh(vertices, faces, colors, normals)


def _triangulate(path: Path, counts: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Fan-triangulate polygons given per-face ``counts`` and concatenated indices."""
    if len(counts) == 0:
        return np.zeros((0, 3), np.int64)
    if np.all(counts == 3):
        return flat.reshape(-1, 3)
    if np.any(counts < 3):
        raise ValueError(f"PLY {path}: faces need at least 3 vertices, found a face with {int(counts.min())}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ntri = counts - 2
    face_of_tri = np.repeat(np.arange(len(counts)), ntri)
    k = np.arange(int(ntri.sum())) - np.repeat(np.cumsum(ntri) - ntri, ntri)  # 0..n-3 within each face
    s = starts[face_of_tri]
    return np.stack([flat[s], flat[s + k + 1], flat[s + k + 2]], axis=1)
