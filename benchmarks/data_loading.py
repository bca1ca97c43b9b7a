"""Benchmark of the training data layer: milliseconds per view and samples per second.

Cases (all at the reference's 224x224 with ``aug_crop=16`` and colour jitter, 11 views per sample):

- ``scannet_sens``: a ScanNet-sized ``.sens`` (colour 1296x968 JPEG, depth 640x480 zlib) read directly;
- ``scannet_export``: the same frames after ``forward3d data prepare scannet`` (JPEG/PNG files);
- ``synthetic``: the synthetic generator, rendering each 320x240 frame on the fly;
- per stage for one 1296x968 -> 224 view: decode, crop/resize, colour jitter.

    python benchmarks/data_loading.py            # 40 frames per source, 6 samples per case
    python benchmarks/data_loading.py --quick

Writes ``benchmarks/results/data_loading.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import machine_info, print_table, write_json  # noqa: E402


def _frames(n: int):
    from forward3d.data.synthetic import SyntheticScene

    scene = SyntheticScene(num_frames=n, width=640, height=480, seed=0, trajectory="handheld")
    return list(scene.frames())


def _time_samples(ds, n: int) -> tuple[float, float]:
    ds[0]  # warm caches (file headers, scene textures)
    t0 = time.perf_counter()
    for i in range(n):
        ds[(i * 7 + 1) % len(ds)]
    dt = time.perf_counter() - t0
    return dt / n, dt / (n * ds.config.num_views)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="data_loading.json")
    args = ap.parse_args()
    n_frames, n_samples = (24, 3) if args.quick else (40, 6)

    from fake_layouts import write_sens

    from forward3d.data.prepare import PrepareConfig, prepare
    from forward3d.data.sequence import get_dataset_class
    from forward3d.data.views import color_jitter, crop_resize
    from forward3d.io.sens import SensFile

    common = dict(num_views=11, sample_freq=2, resolution=224, aug_crop=16, transform="ColorJitter")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        frames = _frames(n_frames)
        render_s = (time.perf_counter() - t0) / n_frames
        write_sens(tmp / "raw" / "scans" / "scene0000_00" / "scene0000_00.sens", frames, color_size=(1296, 968))
        t0 = time.perf_counter()
        prepare(PrepareConfig("scannet", str(tmp / "raw"), str(tmp / "out"), progress=False))
        prep_s = (time.perf_counter() - t0) / n_frames
        D = get_dataset_class("ScanNet")
        for name, root, source in (("scannet_sens", tmp / "raw", "sens"), ("scannet_export", tmp / "out", "export")):
            ds = D(root=str(root), split=None, source=source, **common)
            per_sample, per_view = _time_samples(ds, n_samples)
            rows.append({"case": name, "ms_per_view": per_view * 1e3, "samples_per_s": 1.0 / per_sample})
        syn = get_dataset_class("Synthetic")(num_scenes=1, frames_per_scene=n_frames, **common)
        per_sample, per_view = _time_samples(syn, n_samples)
        rows.append({"case": "synthetic (renders 320x240)", "ms_per_view": per_view * 1e3,
                     "samples_per_s": 1.0 / per_sample})
        # stages of one ScanNet view
        sens = SensFile(tmp / "raw" / "scans" / "scene0000_00" / "scene0000_00.sens")
        rng = np.random.default_rng(0)
        reps = 10
        t0 = time.perf_counter()
        for i in range(reps):
            f = sens.frame(i % len(sens))
        decode = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            v = crop_resize(f, (224, 224), rng, 16)
        crop = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            color_jitter(v.image, rng)
        jitter = (time.perf_counter() - t0) / reps
    stages = {"decode_sens_frame_ms": decode * 1e3, "crop_resize_ms": crop * 1e3, "color_jitter_ms": jitter * 1e3,
              "prepare_scannet_ms_per_frame": prep_s * 1e3, "synthetic_render_640x480_ms": render_s * 1e3}
    print_table(rows, ["case", "ms_per_view", "samples_per_s"])
    for k, v in stages.items():
        print(f"{k}: {v:.1f}")
    path = write_json(args.out, {"machine": machine_info(), "frames": n_frames, "samples": n_samples,
                                 "config": common, "rows": rows, "stages": stages})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
