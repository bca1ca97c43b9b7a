"""RealEstate10K in the pixelSplat chunk layout (the two-view benchmark's data) and its evaluation index.

Layout (``root``)::

    {split}/index.json        optional {scene key: chunk file name}
    {split}/000000.torch      torch.save'd list of scenes: {"key": str, "url": str, "timestamps": int64 [N],
                              "cameras": float32 [N, 18], "images": N uint8 tensors of JPEG bytes}

``cameras`` rows: ``fx, fy, cx, cy`` normalised by the image width / height, two unused values, then the
``[3, 4]`` world-to-camera matrix row by row (OpenCV axes). Chunks are read with
``torch.load(weights_only=True)``: only tensors and plain containers, nothing in them is executed.

The evaluation index JSON (pixelSplat ``assets/evaluation_index_re10k.json``) maps each scene key to
``{"context": [i, j], "target": [a, b, c]}`` (frame indices) or ``null``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["RE10KChunkScene", "RE10KChunks", "decode_cameras", "encode_cameras", "read_evaluation_index",
           "write_re10k_chunks"]


def decode_cameras(cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 18]`` pixelSplat camera rows -> normalised intrinsics ``[N, 3, 3]`` and ``c2w`` ``[N, 4, 4]``."""
    cam = np.asarray(cameras, np.float64)
    if cam.ndim != 2 or cam.shape[1] != 18:
        raise ValueError(f"RE10K cameras: expected [N, 18] rows, found {list(cam.shape)}")
    n = len(cam)
    K = np.zeros((n, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = cam[:, 0], cam[:, 1], cam[:, 2], cam[:, 3], 1.0
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3] = cam[:, 6:].reshape(n, 3, 4)
    return K, np.linalg.inv(w2c)


def encode_cameras(K_norm: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """The inverse of :func:`decode_cameras`: ``[N, 3, 3]`` normalised K, ``[N, 4, 4]`` c2w -> ``[N, 18]``."""
    K_norm, c2w = np.asarray(K_norm, np.float64), np.asarray(c2w, np.float64)
    w2c = np.linalg.inv(c2w)
    rows = np.zeros((len(c2w), 18))
    rows[:, :4] = np.stack([K_norm[:, 0, 0], K_norm[:, 1, 1], K_norm[:, 0, 2], K_norm[:, 1, 2]], -1)
    rows[:, 6:] = w2c[:, :3].reshape(len(c2w), 12)
    return rows.astype(np.float32)


@dataclass
class RE10KChunkScene:
    """One scene: ``K_norm`` ``[N, 3, 3]`` (normalised), ``c2w`` ``[N, 4, 4]``, N JPEG byte strings."""

    key: str
    K_norm: np.ndarray
    c2w: np.ndarray
    jpegs: list[bytes]
    source: str = ""

    def __len__(self) -> int:
        return len(self.jpegs)

    def image(self, i: int) -> np.ndarray:
        """Frame ``i`` as ``[H, W, 3]`` uint8 (ValueError naming the chunk when it does not decode)."""
        from PIL import Image

        if not 0 <= i < len(self.jpegs):
            raise ValueError(f"{self.source}: scene {self.key} has {len(self.jpegs)} frames, frame {i} asked for")
        try:
            with Image.open(io.BytesIO(self.jpegs[i])) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise ValueError(f"{self.source}: scene {self.key} frame {i} is not a readable image ({exc})") from exc


class RE10KChunks:
    """The scenes of ``root/split`` (chunks found through ``index.json``, else by reading every chunk)."""

    def __init__(self, root: str | os.PathLike, split: str = "test"):
        self.folder = Path(root) / split
        if not self.folder.is_dir():
            raise ValueError(f"{self.folder}: not found (expected the pixelSplat RE10K layout {{root}}/{split}/*.torch)")
        index = self.folder / "index.json"
        if index.is_file():
            try:
                self.index = {str(k): str(v) for k, v in json.loads(index.read_text()).items()}
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{index}: expected a JSON object {{scene key: chunk file}} ({exc})") from exc
        else:
            self.index = {}
            for chunk in sorted(self.folder.glob("*.torch")):
                for item in self._load(chunk):
                    self.index[str(item["key"])] = chunk.name
        self._cache: tuple[str, dict[str, dict]] | None = None

    def _load(self, path: Path) -> list[dict]:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable chunk is one clear error
            raise ValueError(f"{path}: not a readable RE10K chunk ({exc})") from exc
        if not isinstance(data, list) or not all(isinstance(d, dict) and {"key", "cameras", "images"} <= set(d)
                                                 for d in data):
            raise ValueError(f"{path}: expected a list of scenes with key, cameras and images")
        return data

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        return list(self.index)

    def scene(self, key: str) -> RE10KChunkScene:
        if key not in self.index:
            raise ValueError(f"{self.folder}: scene {key} is in no chunk")
        name = self.index[key]
        if self._cache is None or self._cache[0] != name:
            path = self.folder / name
            if not path.is_file():
                raise ValueError(f"{self.folder}/index.json: chunk {name} of scene {key} not found")
            self._cache = (name, {str(d["key"]): d for d in self._load(path)})
        item = self._cache[1].get(key)
        if item is None:
            raise ValueError(f"{self.folder / name}: scene {key} listed in index.json is not in the chunk")
        K, c2w = decode_cameras(torch.as_tensor(item["cameras"]).numpy())
        jpegs = [bytes(torch.as_tensor(im).numpy().tobytes()) for im in item["images"]]
        if len(jpegs) != len(K):
            raise ValueError(f"{self.folder / name}: scene {key} has {len(jpegs)} images for {len(K)} cameras")
        return RE10KChunkScene(key, K, c2w, jpegs, str(self.folder / name))


def read_evaluation_index(path: str | os.PathLike) -> dict[str, dict | None]:
    """``{scene key: {"context": [i, j], "target": [...]} or None}`` (ValueError naming the file)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: evaluation index not found (pixelSplat assets/evaluation_index_re10k.json)")
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise ValueError(f"{p}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object {{scene: {{context, target}} | null}}, found {type(data).__name__}")
    for k, v in data.items():
        if v is not None and not (isinstance(v, dict) and isinstance(v.get("context"), list)
                                  and isinstance(v.get("target"), list)):
            raise ValueError(f"{p}: scene {k}: expected {{\"context\": [...], \"target\": [...]}} or null, found {v!r}")
    return data


def write_re10k_chunks(root: str | os.PathLike, scenes: dict[str, object], split: str = "test",
                       per_chunk: int = 2, quality: int = 95) -> Path:
    """Write synthetic scenes (:class:`~forward3d.data.synthetic.SyntheticScene`) in the chunk layout
    (the benchmark's stand-in); returns the split folder. Frames keep the scenes' own size."""
    from PIL import Image

    from forward3d.io.atomic import atomic_write
    from forward3d.io.jsonio import write_json

    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    items, index = [], {}
    for key, sc in scenes.items():
        frames = [sc.frame(i) for i in range(len(sc))]  # type: ignore[arg-type]
        jpegs = []
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f.image).save(buf, format="JPEG", quality=quality)
            jpegs.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        K = np.stack([f.K for f in frames]).astype(np.float64)
        K[:, 0] /= frames[0].width
        K[:, 1] /= frames[0].height
        items.append({"key": key, "url": "", "timestamps": torch.arange(len(frames), dtype=torch.int64),
                      "cameras": torch.from_numpy(encode_cameras(K, np.stack([f.c2w for f in frames]))),
                      "images": jpegs})
    for c in range(0, len(items), per_chunk):
        name = f"{c // per_chunk:06d}.torch"
        with atomic_write(folder / name, "wb") as fh:
            torch.save(items[c:c + per_chunk], fh)
        index.update({it["key"]: name for it in items[c:c + per_chunk]})
    write_json(folder / "index.json", index)
    return folder
