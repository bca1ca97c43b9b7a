"""Writers of tiny FAKE copies of the published dataset layouts, for the reader tests.

Each writer follows the dataset's own documentation / reference code (names, dtypes, units, file
formats) and is written independently of forward3d's readers (struct, zlib, lz4, PIL, scipy, OpenCV),
so a reader that misreads a convention disagrees with the synthetic ground truth it came from.
Frames come from :class:`forward3d.data.synthetic.SyntheticScene` (OpenCV c2w, K, metric depth).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


def _jpeg(image: np.ndarray, quality: int = 98) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _save_u16(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(a, dtype=np.uint16)).save(path)


def _save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        path.write_bytes(_jpeg(image))
    else:
        Image.fromarray(image).save(path)


def mm(depth: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.nan_to_num(depth) * 1000.0), 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------------------------------
# ScanNet .sens (SensorData v4)
# --------------------------------------------------------------------------------------------------


def write_sens(path: Path, frames, color_size: tuple[int, int] | None = None, invalid_pose: set[int] = frozenset(),
               truncate: int = 0, imu_tail: bool = True) -> bytes:
    """A byte-exact ScanNet .sens file: JPEG colour (optionally at ``color_size``), zlib uint16 mm depth."""
    f0 = frames[0]
    dh, dw = f0.depth.shape
    cw, ch = color_size or (dw, dh)
    K_d = np.eye(4)
    K_d[:3, :3] = f0.K
    K_c = K_d.copy()
    K_c[0, :3] *= cw / dw
    K_c[1, :3] *= ch / dh
    name = b"StructureSensor"
    out = bytearray()
    out += struct.pack("<I", 4) + struct.pack("<Q", len(name)) + name
    for m in (K_c, np.eye(4), K_d, np.eye(4)):
        out += np.asarray(m, dtype="<f4").tobytes()  # row-major 4x4
    out += struct.pack("<ii", 2, 1)  # jpeg colour, zlib_ushort depth
    out += struct.pack("<IIII", cw, ch, dw, dh)
    out += struct.pack("<f", 1000.0)
    out += struct.pack("<Q", len(frames))
    for i, f in enumerate(frames):
        c2w = np.full((4, 4), -np.inf) if i in invalid_pose else f.c2w
        color = np.asarray(Image.fromarray(f.image).resize((cw, ch), Image.Resampling.BILINEAR)) \
            if (cw, ch) != (dw, dh) else f.image
        cb = _jpeg(color)
        db = zlib.compress(mm(f.depth).astype("<u2").tobytes())
        out += np.asarray(c2w, dtype="<f4").tobytes()
        out += struct.pack("<QQQQ", 1_000_000 + 33_333 * i, 1_000_000 + 33_333 * i, len(cb), len(db))
        out += cb + db
    if imu_tail:
        out += struct.pack("<Q", 0)  # num_IMU_frames
    data = bytes(out[: len(out) - truncate] if truncate else out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# --------------------------------------------------------------------------------------------------
# ARKitScenes raw
# --------------------------------------------------------------------------------------------------


def write_arkitscenes_video(root: Path, video_id: str, frames, t0: float = 6845.8) -> Path:
    """``root/<video_id>/lowres_wide|lowres_depth|lowres_wide_intrinsics`` + ``lowres_wide.traj``."""
    vd = root / video_id
    lines = []
    for i, f in enumerate(frames):
        ts = round(t0 + i / 10.0, 3)
        stem = f"{video_id}_{ts:.3f}"
        _save_rgb(vd / "lowres_wide" / f"{stem}.png", f.image)
        _save_u16(vd / "lowres_depth" / f"{stem}.png", mm(f.depth))
        K = f.K
        h, w = f.image.shape[:2]
        (vd / "lowres_wide_intrinsics").mkdir(parents=True, exist_ok=True)
        (vd / "lowres_wide_intrinsics" / f"{stem}.pincam").write_text(
            f"{w} {h} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")
        w2c = np.linalg.inv(f.c2w)
        rv = Rotation.from_matrix(w2c[:3, :3]).as_rotvec()
        # trajectory samples are not exactly at the frame times (ARKit logs its own clock)
        lines.append(f"{ts + 0.0004:.8f} " + " ".join(f"{v:.9f}" for v in (*rv, *w2c[:3, 3])))
    (vd / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
    return vd


# --------------------------------------------------------------------------------------------------
# CO3D v2
# --------------------------------------------------------------------------------------------------


def _float16_png(path: Path, depth: np.ndarray) -> None:
    bits = depth.astype(np.float16).view(np.uint16)
    _save_u16(path, bits)


def write_co3d_category(root: Path, category: str, sequences: dict[str, list], depth_scale: float = 2.0,
                        isotropic: bool = True) -> Path:
    """``root/<category>/frame_annotations.jgz`` + images, float16 depth, depth masks, object masks, set list.

    The stored depth is the metric depth divided by ``depth_scale`` and ``scale_adjustment`` is
    ``depth_scale``, so the reader's ``depth * scale_adjustment`` is metric again.
    """
    annos, set_list = [], {"train": [], "val": [], "test": []}
    for seq, frames in sequences.items():
        for n, f in enumerate(frames, start=1):
            h, w = f.image.shape[:2]
            rel = f"{category}/{seq}"
            img = f"{rel}/images/frame{n:06d}.jpg"
            dep = f"{rel}/depths/frame{n:06d}.jpg.geometric.png"
            dmask = f"{rel}/depth_masks/frame{n:06d}.png"
            fmask = f"{rel}/masks/frame{n:06d}.png"
            _save_rgb(root / img, f.image)
            _float16_png(root / dep, f.depth / depth_scale)
            valid = (f.depth > 0).astype(np.uint8) * 255
            valid[: h // 8] = 0  # the top rows: no depth
            (root / dmask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(valid).save(root / dmask)
            fg = np.zeros((h, w), np.uint8)
            fg[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255  # "the object": the image centre
            (root / fmask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fg).save(root / fmask)
            # OpenCV -> PyTorch3D: x_cam_p3d = R^T x_w + T with R_p3d^T = diag(-1,-1,1) R_w2c
            w2c = np.linalg.inv(f.c2w)
            flip = np.diag([-1.0, -1.0, 1.0])
            R = (flip @ w2c[:3, :3]).T
            T = flip @ w2c[:3, 3]
            K = f.K
            if isotropic:
                s = np.array([min(w, h) / 2.0] * 2)
                fmt = "ndc_isotropic"
            else:
                s = np.array([w / 2.0, h / 2.0])
                fmt = "ndc_norm_image_bounds"
            focal = [K[0, 0] / s[0], K[1, 1] / s[1]]
            pp = [(w / 2.0 - K[0, 2]) / s[0], (h / 2.0 - K[1, 2]) / s[1]]
            annos.append({
                "sequence_name": seq, "frame_number": n - 1, "frame_timestamp": (n - 1) / 30.0,
                "image": {"path": img, "size": [h, w]},
                "depth": {"path": dep, "scale_adjustment": depth_scale, "mask_path": dmask},
                "mask": {"path": fmask, "mass": float(fg.sum() / 255)},
                "viewpoint": {"R": R.tolist(), "T": T.tolist(), "focal_length": focal, "principal_point": pp,
                              "intrinsics_format": fmt},
                "meta": {"frame_type": "test_known", "frame_splits": ["singlesequence_apple_test_0_known"]},
            })
            set_list["train" if n % 4 else "val"].append([seq, n - 1, img])
    cat = root / category
    cat.mkdir(parents=True, exist_ok=True)
    (cat / "frame_annotations.jgz").write_bytes(gzip.compress(json.dumps(annos).encode()))
    (cat / "set_lists").mkdir(exist_ok=True)
    (cat / "set_lists" / "set_lists_fewview_dev.json").write_text(json.dumps(set_list))
    return cat


# --------------------------------------------------------------------------------------------------
# Habitat (DUSt3R export)
# --------------------------------------------------------------------------------------------------


def write_habitat_sequence(folder: Path, frames, depth_format: str = "exr") -> Path:
    import os

    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        stem = f"{i:06d}"
        _save_rgb(folder / f"{stem}.jpeg", f.image)
        d = f.depth.astype(np.float32)
        if depth_format == "exr":
            assert cv2.imwrite(str(folder / f"{stem}_depth.exr"), d)
        else:
            np.save(folder / f"{stem}_depth.npy", d)
        np.savez(folder / f"{stem}_camera_params.npz", camera_intrinsics=f.K.astype(np.float32),
                 R_cam2world=f.c2w[:3, :3].astype(np.float32), t_cam2world=f.c2w[:3, 3].astype(np.float32))
    return folder


# --------------------------------------------------------------------------------------------------
# ScanNet++
# --------------------------------------------------------------------------------------------------


def fisheye_from_pinhole(image: np.ndarray, K_pin: np.ndarray, K_fish: np.ndarray, dist: np.ndarray,
                         size: tuple[int, int], interpolation: int | None = None) -> np.ndarray:
    """Resample a (wide) pinhole image into an OPENCV_FISHEYE image of ``size`` (W, H).

    Both ``K`` are COLMAP / forward3d intrinsics (pixel centres at +0.5); OpenCV puts them at 0, so
    its calls get ``K`` shifted by -0.5 and pinhole pixel indices are coordinates - 0.5."""
    import cv2

    w, h = size
    K_cv = K_fish.copy()
    K_cv[:2, 2] -= 0.5
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    und = cv2.fisheye.undistortPoints(pts, K_cv, dist).reshape(h, w, 2)  # normalised camera coords
    mx = (K_pin[0, 0] * und[..., 0] + K_pin[0, 2] - 0.5).astype(np.float32)
    my = (K_pin[1, 1] * und[..., 1] + K_pin[1, 2] - 0.5).astype(np.float32)
    interp = cv2.INTER_LINEAR if interpolation is None else interpolation
    return cv2.remap(image, mx, my, interpolation=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def write_scannetpp_dslr(scene_dir: Path, scene, indices: list[int], size: tuple[int, int], K_fish: np.ndarray,
                         dist: np.ndarray, test: set[int] = frozenset(), render_depth: bool = True) -> None:
    """``dslr/resized_images``, ``resized_anon_masks``, ``nerfstudio/transforms.json`` (OpenGL c2w,
    OPENCV_FISHEYE), ``train_test_lists.json`` and the toolbox's ``render_depth`` (uint16 mm, fisheye)."""
    import cv2

    w, h = size
    pin_w, pin_h = 2 * w, 2 * h  # a wide pinhole render that covers the fisheye field of view
    K_pin = np.array([[K_fish[0, 0] * 0.6, 0, pin_w / 2], [0, K_fish[1, 1] * 0.6, pin_h / 2], [0, 0, 1.0]])
    dslr = scene_dir / "dslr"
    frames, test_frames = [], []
    for i in indices:
        name = f"DSC{i + 1:05d}.JPG"
        rgb, depth = scene.render(scene.c2w[i], K_pin, pin_w, pin_h)
        fish = fisheye_from_pinhole(rgb, K_pin, K_fish, dist, size)
        _save_rgb(dslr / "resized_images" / name, fish)
        mask = np.full((h, w), 255, np.uint8)
        mask[h // 2 - 8: h // 2 + 8, w // 2 - 8: w // 2 + 8] = 0  # an anonymised block at the centre
        (dslr / "resized_anon_masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(dslr / "resized_anon_masks" / f"DSC{i + 1:05d}.png")
        if render_depth:
            dfish = fisheye_from_pinhole(depth, K_pin, K_fish, dist, size, cv2.INTER_NEAREST)
            _save_u16(dslr / "render_depth" / f"DSC{i + 1:05d}.png", mm(dfish))
        entry = {"file_path": name, "transform_matrix": (scene.c2w[i] @ GL).tolist(),
                 "mask_path": f"DSC{i + 1:05d}.png", "is_bad": False}
        (test_frames if i in test else frames).append(entry)
    tf = {"fl_x": float(K_fish[0, 0]), "fl_y": float(K_fish[1, 1]), "cx": float(K_fish[0, 2]),
          "cy": float(K_fish[1, 2]), "w": w, "h": h, "k1": float(dist[0]), "k2": float(dist[1]),
          "k3": float(dist[2]), "k4": float(dist[3]), "camera_model": "OPENCV_FISHEYE", "frames": frames,
          "test_frames": test_frames}
    (dslr / "nerfstudio").mkdir(parents=True, exist_ok=True)
    (dslr / "nerfstudio" / "transforms.json").write_text(json.dumps(tf, indent=2))
    lists = {"train": [f["file_path"] for f in frames], "test": [f["file_path"] for f in test_frames]}
    (dslr / "train_test_lists.json").write_text(json.dumps(lists))


def encode_depth_bin(depths: list[np.ndarray], form: str) -> bytes:
    """``depth.bin`` as the iPhone app writes it: ``"global"`` (raw-DEFLATE float32 stream),
    ``"lz4"`` (size-prefixed LZ4 blocks of uint16 mm) or ``"deflate"`` (size-prefixed raw-DEFLATE float32)."""
    def deflate(b: bytes) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(b) + c.flush()

    if form == "global":
        return deflate(b"".join(d.astype("<f4").tobytes() for d in depths))
    out = bytearray()
    for d in depths:
        if form == "lz4":
            import lz4.block

            rec = lz4.block.compress(mm(d).astype("<u2").tobytes(), store_size=False)
        else:
            rec = deflate(d.astype("<f4").tobytes())
        out += struct.pack("<I", len(rec)) + rec
    return bytes(out)


def write_scannetpp_iphone(scene_dir: Path, scene, n: int, rgb_size: tuple[int, int], depth_form: str = "lz4",
                           video_name: str = "rgb.mkv") -> None:
    """``iphone/rgb.mkv`` (every frame), ``depth.bin`` (256x192), ``pose_intrinsic_imu.json``
    (``aligned_pose`` c2w, ``intrinsic`` for 1920x1440 like the real files)."""
    import av

    ip = scene_dir / "iphone"
    ip.mkdir(parents=True, exist_ok=True)
    w, h = rgb_size
    K = scene.intrinsics(w, h)
    depths, poses = [], {}
    with av.open(str(ip / video_name), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=60)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if stream.codec_context.name == "libx264":
            stream.options = {"crf": "0", "preset": "ultrafast"}
        for i in range(n):
            rgb, _ = scene.render(scene.c2w[i], K, w, h)
            _, d = scene.render(scene.c2w[i], scene.intrinsics(256, 192), 256, 192)
            depths.append(d)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
            K_full = K.copy()
            K_full[0] *= 1920 / w
            K_full[1] *= 1440 / h
            poses[f"frame_{i:06d}"] = {"timestamp": i / 60.0, "intrinsic": K_full.tolist(),
                                       "pose": np.eye(4).tolist(), "aligned_pose": scene.c2w[i].tolist(),
                                       "quaternion": [1, 0, 0, 0], "euler": [0, 0, 0], "gravity": [0, -9.8, 0]}
        for pkt in stream.encode():
            out.mux(pkt)
    (ip / "depth.bin").write_bytes(encode_depth_bin(depths, depth_form))
    (ip / "pose_intrinsic_imu.json").write_text(json.dumps(poses))
