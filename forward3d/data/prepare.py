"""Dataset preprocessing (``forward3d data prepare DATASET RAW OUT``) and integrity checks (``data check OUT``).

What each dataset needs before its training reader can use it:

- ``scannet``: export every ``RAW/**/<scene>.sens`` (:func:`forward3d.io.sens.export_sens`) to
  ``OUT/<scene>/color|depth|pose|intrinsic`` (colour JPEGs copied as stored, depth uint16 mm);
  ``frame_skip`` keeps every k-th frame; ``resize`` optionally brings colour to the depth size (or
  depth to the colour size). The split files ``scannetv2_*.txt`` are copied.
- ``scannetpp``: per scene of ``RAW/data/``: the DSLR fisheye images, anonymisation masks and the
  mesh-rendered depth of the scannetpp toolbox (``dslr/render_depth``, if rendered) are undistorted to
  a pinhole camera with OpenCV as the toolbox's ``dslr/undistort.py`` does (``balance=0``; see
  :func:`undistort_maps` for the half-pixel convention),
  with ``nerfstudio/transforms_undistorted.json``; the iPhone ``rgb.mkv``/``rgb.mp4`` video and
  ``depth.bin`` are decoded to ``rgb/frame_XXXXXX.jpg`` and ``depth/frame_XXXXXX.png`` (uint16 mm)
  every ``iphone_every`` frames (10 = the COLMAP frames), ``colmap/`` and ``pose_intrinsic_imu.json``
  copied; ``resize`` as for ScanNet. Output layout = the download's, under ``OUT/data/<scene>/``.

Resumable: ``OUT/forward3d_index.json`` records each finished scene with a manifest
(``OUT/_manifests/<scene>.json``: size and SHA-256 of every file written); a finished scene whose files
are all present with their sizes is skipped, an interrupted one is redone (files are written
atomically, so none is ever half-written). A scene that fails (missing or corrupt raw files) is
recorded with its error and the others go on. :func:`check` verifies an output folder against its
manifests and reports missing, truncated and corrupt files and failed or unfinished scenes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from forward3d.io.atomic import atomic_write

__all__ = ["PrepareConfig", "PrepareReport", "CheckReport", "prepare", "check", "PREPARERS", "INDEX_NAME"]

log = logging.getLogger(__name__)

INDEX_NAME = "forward3d_index.json"
MANIFEST_DIR = "_manifests"
INDEX_FORMAT = "forward3d-data-index"
Resize = Literal["none", "color_to_depth", "depth_to_color"]


@dataclass
class PrepareConfig:
    """Options of :func:`prepare`.

    Attributes:
        dataset: ``"scannet"`` or ``"scannetpp"`` (see :data:`PREPARERS`).
        raw: the downloaded dataset. ``out``: the output folder (may be ``raw`` for ScanNet++, which
            then gains the processed files beside the download).
        scenes: only these scene ids (default: all found, ScanNet++: the split files' scenes).
        frame_skip: ScanNet: export every k-th frame.
        iphone_every: ScanNet++: decode every k-th iPhone video frame.
        resize: ``"none"``, ``"color_to_depth"`` (colour written at the depth size) or
            ``"depth_to_color"`` (depth upsampled to the colour size, nearest).
        dslr, iphone: ScanNet++ parts to process.
        render_dir: ScanNet++: the toolbox's render output (``<render_dir>/<scene>/dslr/render_depth``);
            default ``RAW/data/<scene>/dslr/render_depth``.
        overwrite: redo finished scenes. ``verify``: check the files of finished scenes before skipping.
        jpeg_quality: quality of re-encoded JPEGs. ``progress``: tqdm progress bars.
    """

    dataset: str
    raw: str
    out: str
    scenes: tuple[str, ...] = ()
    frame_skip: int = 1
    iphone_every: int = 10
    resize: Resize = "none"
    dslr: bool = True
    iphone: bool = True
    render_dir: str = ""
    overwrite: bool = False
    verify: bool = True
    jpeg_quality: int = 95
    progress: bool = True

    def validate(self) -> None:
        if self.dataset not in PREPARERS:
            raise ValueError(f"prepare: unknown dataset {self.dataset!r}; preprocessing exists for "
                             f"{', '.join(sorted(PREPARERS))} (the other datasets are read as downloaded)")
        if not Path(self.raw).is_dir():
            raise ValueError(f"prepare: raw dataset folder {self.raw} does not exist")
        if self.frame_skip < 1 or self.iphone_every < 1:
            raise ValueError(f"prepare: frame_skip and iphone_every must be >= 1, found {self.frame_skip}, "
                             f"{self.iphone_every}")
        if self.resize not in ("none", "color_to_depth", "depth_to_color"):
            raise ValueError(f"prepare: resize must be none, color_to_depth or depth_to_color, found {self.resize!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"prepare: jpeg_quality must be in [1, 100], found {self.jpeg_quality}")


@dataclass
class PrepareReport:
    """What :func:`prepare` did: scenes processed, skipped (already finished) and failed (with errors)."""

    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    files: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.out}: {len(self.done)} scenes prepared, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed ({self.files} files, {self.seconds:.1f} s)"]
        lines += [f"  FAILED {s}: {e}" for s, e in self.failed.items()]
        return "\n".join(lines)


@dataclass
class CheckReport:
    """What :func:`check` found. ``ok`` when nothing is missing, corrupt, failed or unfinished."""

    out: Path
    scenes_ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.failed or self.incomplete)

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.out}: {len(self.scenes_ok)} scenes complete, {self.files_checked} files checked; "
                 f"{len(self.missing)} missing, {len(self.corrupt)} corrupt, {len(self.failed)} failed scenes, "
                 f"{len(self.incomplete)} unfinished scenes"]
        lines += [f"  MISSING {p}" for p in self.missing[:limit]]
        lines += [f"  CORRUPT {p}: {why}" for p, why in self.corrupt[:limit]]
        lines += [f"  FAILED {s}: {e}" for s, e in self.failed.items()]
        lines += [f"  UNFINISHED {s}" for s in self.incomplete[:limit]]
        hidden = max(0, len(self.missing) - limit) + max(0, len(self.corrupt) - limit)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines) + ("\nOK" if self.ok else "")


# --------------------------------------------------------------------------------------------------
# Index and manifests
# --------------------------------------------------------------------------------------------------


def _manifest_name(scene: str) -> str:
    return scene.replace("/", "__").replace("\\", "__") + ".json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Writer:
    """Writes the files of one scene atomically and records their size and SHA-256."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, list] = {}

    def write(self, path: Path, data: bytes) -> None:
        with atomic_write(path, "wb") as f:
            f.write(data)
        self.files[Path(path).relative_to(self.out).as_posix()] = [len(data), hashlib.sha256(data).hexdigest()]

    def copy(self, src: Path, dst: Path) -> None:
        self.write(dst, Path(src).read_bytes())


def _read_json(path: Path, what: str) -> dict:
    from forward3d.io.jsonio import read_json

    return read_json(path, what)


def _load_index(out: Path, dataset: str) -> dict:
    path = out / INDEX_NAME
    if not path.is_file():
        return {"format": INDEX_FORMAT, "version": 1, "dataset": dataset, "scenes": {}}
    index = _read_json(path, "prepare index")
    if index.get("format") != INDEX_FORMAT or not isinstance(index.get("scenes"), dict):
        raise ValueError(f"{path}: not a forward3d prepare index")
    if index.get("dataset") != dataset:
        raise ValueError(f"{path}: this folder holds prepared {index.get('dataset')!r}, not {dataset!r}; use another OUT")
    return index


def _save_json(path: Path, data: dict) -> None:
    from forward3d.io.jsonio import write_json

    write_json(path, data)


def _scene_intact(out: Path, entry: dict) -> bool:
    """A finished scene whose manifest exists and whose files all have their recorded sizes."""
    mpath = out / MANIFEST_DIR / entry.get("manifest", "")
    if entry.get("status") != "done" or not mpath.is_file():
        return False
    try:
        files = _read_json(mpath, "manifest")["files"]
    except (ValueError, KeyError):
        return False
    for rel, (size, _sha) in files.items():
        p = out / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------------------


def _scannet_scenes(raw: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pattern in ("scans/*/*.sens", "scans_test/*/*.sens", "*/*.sens", "*.sens"):
        for p in sorted(raw.glob(pattern)):
            found.setdefault(p.stem, p)
    return found


def _prepare_scannet(cfg: PrepareConfig, scene: str, src: Path, out: Path, writer: _Writer,
                     progress: Callable[[int], None]) -> None:
    from forward3d.io.sens import SensFile, export_sens

    sens = SensFile(src)
    export_sens(sens, out / scene, frame_skip=cfg.frame_skip, resize=cfg.resize, write=writer.write,
                progress=progress)


def _scannet_root_files(raw: Path, out: Path, writer: _Writer) -> None:
    for pattern in ("scannetv2_*.txt", "splits/scannetv2_*.txt", "Tasks/Benchmark/scannetv2_*.txt"):
        for p in raw.glob(pattern):
            writer.copy(p, out / p.name)


# --------------------------------------------------------------------------------------------------
# ScanNet++
# --------------------------------------------------------------------------------------------------


def _scannetpp_scenes(raw: Path) -> dict[str, Path]:
    from forward3d.data.readers_scannetpp import scannetpp_scene_dirs

    dirs = scannetpp_scene_dirs(raw, None)
    split_files = sorted((raw / "splits").glob("*.txt")) if (raw / "splits").is_dir() else []
    if split_files:  # the scenes the splits name (the download also holds test scenes without GT)
        from forward3d.data.sequence import read_split_file

        listed = {s for f in split_files for s in read_split_file(f)}
        dirs = [d for d in dirs if d.name in listed] or dirs
    return {d.name: d for d in dirs}


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except Exception as exc:  # PIL raises many types on bad files
        raise ValueError(f"{path}: not a readable mask ({type(exc).__name__}: {exc})") from exc


def _read_depth_u16(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except Exception as exc:  # PIL raises many types on bad files
        raise ValueError(f"{path}: not a readable depth PNG ({type(exc).__name__}: {exc})") from exc
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected a 16-bit depth PNG, found {a.dtype} {list(a.shape)}")
    return a.astype(np.uint16)


def undistort_maps(K: np.ndarray, dist: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fisheye -> pinhole undistortion: ``(new_K [3, 3], map_x, map_y)`` for ``cv2.remap``.

    As the scannetpp toolbox (``estimateNewCameraMatrixForUndistortRectify`` with ``balance=0``, same
    size), except that ``K`` (COLMAP convention, pixel centres at +0.5) is shifted to OpenCV's
    (centres at 0) for the OpenCV calls and ``new_K`` shifted back, as the SLAM3R/DUSt3R preprocessing
    does; the toolbox skips the shift, which misplaces pixels by a fraction of a pixel where the
    distortion is strong."""
    from forward3d.io._cv import import_cv2

    cv2 = import_cv2()
    K = np.asarray(K, dtype=np.float64).copy()
    K[:2, 2] -= 0.5
    D = np.asarray(dist, dtype=np.float64).reshape(4)
    new_K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, D, (width, height), np.eye(3), balance=0.0)
    m1, m2 = cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), new_K, (width, height), cv2.CV_32FC1)
    new_K = np.asarray(new_K, dtype=np.float64).copy()
    new_K[:2, 2] += 0.5
    return new_K, m1, m2


def _prepare_dslr(cfg: PrepareConfig, scene: str, sd: Path, od: Path, writer: _Writer,
                  progress: Callable[[int], None]) -> int:
    from forward3d.io._cv import import_cv2
    from forward3d.io.scannetpp import read_dslr_transforms
    from forward3d.io.source_base import read_rgb

    cv2 = import_cv2()
    dslr, odslr = sd / "dslr", od / "dslr"
    tf_path = dslr / "nerfstudio" / "transforms.json"
    if not tf_path.is_file():
        raise ValueError(f"{tf_path}: missing (the DSLR part of the download is incomplete)")
    t = read_dslr_transforms(tf_path)
    cam = t.camera
    new_K, m1, m2 = undistort_maps(cam.K, cam.dist, cam.width, cam.height)
    render = Path(cfg.render_dir) / scene / "dslr" / "render_depth" if cfg.render_dir else dslr / "render_depth"
    if not render.is_dir():
        log.warning("%s: no rendered DSLR depth in %s (render it with the scannetpp toolbox's common/render.py); "
                    "the DSLR frames get no depth", scene, render)
    n = 0
    for name, _c2w, mask_name, _bad in t.frames + t.test_frames:
        src = dslr / "resized_images" / name
        if not src.is_file():
            if (name, _c2w, mask_name, _bad) in t.test_frames:
                continue  # test images are withheld for the benchmark's test scenes
            raise ValueError(f"{src}: missing DSLR image (listed in {tf_path.name})")
        img = read_rgb(src)
        if img.shape[:2] != (cam.height, cam.width):
            raise ValueError(f"{src}: image is {img.shape[1]}x{img.shape[0]}, the camera is {cam.width}x{cam.height}")
        und = cv2.remap(img, m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        writer.write(odslr / "undistorted_images" / name, _jpeg(und, cfg.jpeg_quality))
        stem = Path(name).stem
        mpath = dslr / "resized_anon_masks" / (mask_name or f"{stem}.png")
        if mpath.is_file():
            mask = cv2.remap(_read_gray(mpath), m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            mask[mask < 255] = 0
            writer.write(odslr / "undistorted_anon_masks" / f"{stem}.png", _png(mask))
        dpath = render / f"{stem}.png"
        if dpath.is_file():
            depth = cv2.remap(_read_depth_u16(dpath), m1, m2, interpolation=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            writer.write(odslr / "undistorted_depth" / f"{stem}.png", _png(depth.astype(np.uint16)))
        n += 1
        progress(n)
    out_tf = dict(t.raw)
    out_tf.update({"fl_x": float(new_K[0, 0]), "fl_y": float(new_K[1, 1]), "cx": float(new_K[0, 2]),
                   "cy": float(new_K[1, 2]), "w": cam.width, "h": cam.height, "camera_model": "PINHOLE"})
    for k in ("k1", "k2", "k3", "k4"):
        if k in out_tf:
            out_tf[k] = 0.0
    writer.write(odslr / "nerfstudio" / "transforms_undistorted.json", json.dumps(out_tf, indent=1).encode())
    if (dslr / "train_test_lists.json").is_file():
        writer.copy(dslr / "train_test_lists.json", odslr / "train_test_lists.json")
    return n


def _prepare_iphone(cfg: PrepareConfig, scene: str, sd: Path, od: Path, writer: _Writer,
                    progress: Callable[[int], None]) -> int:
    from forward3d.io.scannetpp import iter_iphone_depth
    from forward3d.io.source_base import resize_depth, resize_rgb
    from forward3d.io.sources import VideoSource

    ip, oip = sd / "iphone", od / "iphone"
    video = next((ip / n for n in ("rgb.mkv", "rgb.mp4") if (ip / n).is_file()), None)
    if video is None:
        raise ValueError(f"{ip}: no rgb.mkv / rgb.mp4 (the iPhone part of the download is incomplete)")
    if not (ip / "depth.bin").is_file():
        raise ValueError(f"{ip / 'depth.bin'}: missing (the iPhone part of the download is incomplete)")
    depths = iter_iphone_depth(ip / "depth.bin", every=cfg.iphone_every)
    n = 0
    for frame in VideoSource(video, stride=cfg.iphone_every, on_error="raise"):
        try:
            k, depth = next(depths)
        except StopIteration:
            raise ValueError(f"{ip / 'depth.bin'}: ends before video frame {frame.index} (truncated?)") from None
        if k != frame.index:
            raise ValueError(f"{ip}: depth frame {k} does not line up with video frame {frame.index}")
        image = frame.image
        h, w = image.shape[:2]
        if cfg.resize == "color_to_depth":
            image = resize_rgb(image, depth.shape[1], depth.shape[0])
        elif cfg.resize == "depth_to_color":
            depth = resize_depth(depth, w, h)
        stem = f"frame_{k:06d}"
        writer.write(oip / "rgb" / f"{stem}.jpg", _jpeg(image, cfg.jpeg_quality))
        writer.write(oip / "depth" / f"{stem}.png", _png(np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)))
        n += 1
        progress(n)
    if n == 0:
        raise ValueError(f"{video}: no frame decoded")
    mask_video = ip / "rgb_mask.mkv"
    if mask_video.is_file():
        for frame in VideoSource(mask_video, stride=cfg.iphone_every, on_error="raise"):
            m = frame.image[..., 0]
            if cfg.resize == "color_to_depth":
                from PIL import Image

                m = np.asarray(Image.fromarray(m).resize((256, 192), Image.Resampling.NEAREST))
            writer.write(oip / "rgb_masks" / f"frame_{frame.index:06d}.png", _png(m))
    for rel in ("pose_intrinsic_imu.json", "colmap/cameras.txt", "colmap/images.txt", "colmap/points3D.txt"):
        if (ip / rel).is_file():
            writer.copy(ip / rel, oip / rel)
    return n


def _prepare_scannetpp(cfg: PrepareConfig, scene: str, sd: Path, out: Path, writer: _Writer,
                       progress: Callable[[int], None]) -> None:
    od = out / "data" / scene
    parts = 0
    if cfg.dslr and (sd / "dslr").is_dir():
        _prepare_dslr(cfg, scene, sd, od, writer, progress)
        parts += 1
    if cfg.iphone and (sd / "iphone").is_dir():
        _prepare_iphone(cfg, scene, sd, od, writer, progress)
        parts += 1
    if not parts:
        raise ValueError(f"{sd}: no dslr/ or iphone/ folder to prepare")


def _scannetpp_root_files(raw: Path, out: Path, writer: _Writer) -> None:
    if (raw / "splits").is_dir():
        for p in sorted((raw / "splits").glob("*.txt")):
            writer.copy(p, out / "splits" / p.name)


# dataset -> (find scenes, prepare one scene, copy root files)
PREPARERS: dict[str, tuple[Callable, Callable, Callable]] = {
    "scannet": (_scannet_scenes, _prepare_scannet, _scannet_root_files),
    "scannetpp": (_scannetpp_scenes, _prepare_scannetpp, _scannetpp_root_files),
}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def prepare(config: PrepareConfig) -> PrepareReport:
    """Preprocess ``config.raw`` into ``config.out`` (resumable; see the module docstring)."""
    config.validate()
    raw, out = Path(config.raw), Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    find, run, root_files = PREPARERS[config.dataset]
    index = _load_index(out, config.dataset)
    scenes = find(raw)
    if config.scenes:
        missing = [s for s in config.scenes if s not in scenes]
        if missing:
            raise ValueError(f"prepare {config.dataset}: scenes {missing} not found under {raw}")
        scenes = {s: scenes[s] for s in config.scenes}
    if not scenes:
        raise ValueError(f"prepare {config.dataset}: no scene found under {raw}")
    report = PrepareReport(out)
    t0 = time.monotonic()
    root_writer = _Writer(out)
    root_files(raw, out, root_writer)
    if root_writer.files:
        _save_json(out / MANIFEST_DIR / "_root.json", {"scene": "_root", "files": root_writer.files})
        index["root_manifest"] = "_root.json"
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a required dependency
        tqdm = None
    bar = tqdm(total=len(scenes), desc=f"prepare {config.dataset}", unit="scene", disable=not config.progress) \
        if tqdm else None
    for scene, src in scenes.items():
        entry = index["scenes"].get(scene, {})
        if not config.overwrite and entry.get("status") == "done" and (not config.verify or _scene_intact(out, entry)):
            report.skipped.append(scene)
            if bar:
                bar.update(1)
            continue
        writer = _Writer(out)
        fbar = tqdm(desc=scene, unit="frame", leave=False, disable=not config.progress) if tqdm else None

        def progress(n: int, fbar=fbar) -> None:
            if fbar is not None:
                fbar.n = n
                fbar.refresh()

        try:
            index["scenes"][scene] = {"status": "running"}
            _save_json(out / INDEX_NAME, index)
            run(config, scene, src, out, writer, progress)
            mname = _manifest_name(scene)
            _save_json(out / MANIFEST_DIR / mname, {"scene": scene, "source": str(src), "files": writer.files})
            index["scenes"][scene] = {"status": "done", "manifest": mname, "files": len(writer.files)}
            report.done.append(scene)
            report.files += len(writer.files)
        except (ValueError, OSError, EOFError) as exc:  # a missing dependency (ImportError) stops the run
            log.error("prepare %s: scene %s failed: %s", config.dataset, scene, exc)
            index["scenes"][scene] = {"status": "failed", "error": str(exc)}
            report.failed[scene] = str(exc)
        finally:
            if fbar is not None:
                fbar.close()
        _save_json(out / INDEX_NAME, index)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    report.seconds = time.monotonic() - t0
    return report


def _decodable(path: Path) -> str | None:
    """None when the file decodes (images with PIL, JSON), else the reason."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jpg", ".jpeg", ".png"):
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt file
        return f"does not decode ({type(exc).__name__}: {exc})"
    return None


def check(out_dir: str | os.PathLike, checksums: bool = True, decode: bool = False,
          progress: bool = False) -> CheckReport:
    """Verify a prepared folder against its index and manifests.

    Args:
        checksums: recompute SHA-256 of every file (else sizes only, much faster).
        decode: also decode every image / JSON file.
    """
    out = Path(out_dir)
    ipath = out / INDEX_NAME
    if not ipath.is_file():
        raise ValueError(f"{out}: no {INDEX_NAME}: not a folder written by 'forward3d data prepare'")
    index = _read_json(ipath, "prepare index")
    if index.get("format") != INDEX_FORMAT or not isinstance(index.get("scenes"), dict):
        raise ValueError(f"{ipath}: not a forward3d prepare index")
    report = CheckReport(out)
    manifests = [(s, e) for s, e in index["scenes"].items()]
    if index.get("root_manifest"):
        manifests.append(("_root", {"status": "done", "manifest": index["root_manifest"]}))
    try:
        from tqdm import tqdm

        manifests_iter = tqdm(manifests, desc="check", unit="scene", disable=not progress)
    except ImportError:  # pragma: no cover
        manifests_iter = manifests
    for scene, entry in manifests_iter:
        status = entry.get("status")
        if status == "failed":
            report.failed[scene] = str(entry.get("error", "unknown error"))
            continue
        if status != "done":
            report.incomplete.append(scene)
            continue
        mpath = out / MANIFEST_DIR / str(entry.get("manifest", ""))
        if not mpath.is_file():
            report.missing.append(mpath.relative_to(out).as_posix())
            continue
        try:
            files = _read_json(mpath, "manifest")["files"]
        except (ValueError, KeyError) as exc:
            report.corrupt.append((mpath.relative_to(out).as_posix(), str(exc)))
            continue
        bad = False
        for rel, (size, sha) in files.items():
            p = out / rel
            report.files_checked += 1
            if not p.is_file():
                report.missing.append(rel)
                bad = True
                continue
            actual = p.stat().st_size
            if actual != size:
                report.corrupt.append((rel, f"{actual} bytes, expected {size} (truncated or changed)"))
                bad = True
                continue
            if checksums and _sha256_file(p) != sha:
                report.corrupt.append((rel, "SHA-256 differs from the manifest"))
                bad = True
                continue
            if decode:
                why = _decodable(p)
                if why:
                    report.corrupt.append((rel, why))
                    bad = True
        if not bad and scene != "_root":
            report.scenes_ok.append(scene)
    return report

