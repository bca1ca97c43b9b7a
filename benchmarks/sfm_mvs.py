"""Benchmark of the ``sfm`` back-end on a synthetic textured room (RGB only): time per stage, accuracy.

Stages (``Reconstruction.timings``): reading + spooling + keyframe statistics (``read_s``), keyframe
selection (``keyframes_s``), SIFT extraction (``extract_s``), matching (``match_s``), mapping + bundle
adjustment (``map_s``), PnP registration of the non-keyframes (``register_s``) and, when forward3d.mvs is
installed, dense stereo + fusion (``dense_s``). Frames are rendered before the clock starts.

With ``--colmap`` (and the ``colmap`` program on PATH) the same keyframes are also reconstructed by the
COLMAP command line (feature_extractor, exhaustive/sequential matcher, mapper) with one thread and the
ratio of the SfM times is reported.

    python benchmarks/sfm_mvs.py                       # 640x480, 50 frames, 2 threads
    python benchmarks/sfm_mvs.py --configs 640x480:50 640x480:200 --threads 2 --colmap
    python benchmarks/sfm_mvs.py --configs 320x240:60 --threads 1 --fusion tsdf --out sfm_mvs_tsdf.json

With ``--fusion tsdf`` the dense stage fuses into the TSDF and the fused mesh (its vertices) is scored
too: after the trajectory's Sim(3), against the room's surface seen by the frames (accuracy and
completion medians and means, F-scores; issue 10's target: both medians < 2 cm at 320x240:60).

    python benchmarks/sfm_mvs.py --configs holo:40 holo:200 --threads 2   # real: hololens_000, RGB only

``holo:N`` reads the first N frames of ``shared/data/hololens_000`` (540x360) with its K (as
``--intrinsics`` would give it) and neither its depth nor its poses, runs SfM only (``dense=none``) and
scores the trajectory against ``poses.txt`` after Sim(3). ``holo:N:legacy`` uses the settings of before
(the incremental mapper, COLMAP's SIFT peak threshold, no sub-model joining) for the before/after row.

Writes ``benchmarks/results/sfm_mvs.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._util import machine_info, print_table, write_json  # noqa: E402

STAGES = ["read_s", "keyframes_s", "extract_s", "match_s", "map_s", "join_s", "register_s", "dense_s", "total_s"]


def _colmap_cli(image_dir: Path, names: list[str], matching: str, threads: int, K) -> dict:
    """COLMAP's command line on the same images and settings: seconds per stage."""
    exe = shutil.which("colmap")
    if exe is None:
        return {"colmap": "not installed (apt-get install colmap)"}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "list.txt").write_text("\n".join(names) + "\n")
        db, sparse = tmp / "db.db", tmp / "sparse"
        sparse.mkdir()
        params = f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}"
        steps = [
            ("colmap_extract_s", ["feature_extractor", "--database_path", db, "--image_path", image_dir,
                                  "--image_list_path", tmp / "list.txt", "--ImageReader.single_camera", "1",
                                  "--ImageReader.camera_model", "PINHOLE", "--ImageReader.camera_params", params,
                                  "--SiftExtraction.use_gpu", "0", "--SiftExtraction.num_threads", threads,
                                  "--SiftExtraction.max_num_features", 4096]),
            ("colmap_match_s", [f"{matching}_matcher", "--database_path", db, "--SiftMatching.use_gpu", "0",
                                "--SiftMatching.num_threads", threads]),
            ("colmap_map_s", ["mapper", "--database_path", db, "--image_path", image_dir, "--output_path", sparse,
                              "--Mapper.num_threads", threads, "--Mapper.ba_refine_focal_length", "0",
                              "--Mapper.ba_refine_extra_params", "0"]),
        ]
        for key, args in steps:
            t = time.perf_counter()
            proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
            out[key] = time.perf_counter() - t
            if proc.returncode != 0:
                out["colmap"] = f"{args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}"
                return out
    out["colmap_sfm_s"] = out["colmap_extract_s"] + out["colmap_match_s"] + out["colmap_map_s"]
    return out


def _surface_scores(recon, scene, frames, alignment) -> dict:
    """Cloud and mesh against the GT surface seen by the frames (GT depth), after ``alignment``."""
    from forward3d.eval.surface import VisibilityMask, score_surface
    from forward3d.types import PointCloud

    gt = scene.surface_points(0.01)
    vis = VisibilityMask(gt.points)
    for f in scene.frames():
        vis.update(f)
    keys = ("accuracy_median", "completion_median", "accuracy", "completion", "fscore@0.02", "fscore@0.05")
    out = {}
    for name, pts in (("cloud", recon.points), ("mesh", None if recon.mesh is None else PointCloud(recon.mesh.vertices))):
        if pts is not None and len(pts):
            m = score_surface(pts.transform(alignment), gt, vis.seen)
            out.update({f"{name}_{k.replace('@', '_at_')}": float(m[k]) for k in keys})
    return out


HOLO = ROOT.parent / "shared" / "data" / "hololens_000"


def run_holo(spec: str, threads: int) -> dict:
    """``holo:N[:legacy]``: hololens_000 RGB only (K known), SfM trajectory vs poses.txt after Sim(3)."""
    import numpy as np

    from forward3d.eval.traj import ate
    from forward3d.io.sources import open_frames
    from forward3d.pipelines.sfm import SfMBackend

    parts = spec.split(":")
    n = int(parts[1])
    legacy = len(parts) > 2 and parts[2] == "legacy"
    root = HOLO if HOLO.is_dir() else Path("/work/shared/data/hololens_000")
    frames = list(open_frames(root, max_frames=n))
    gt = np.stack([f.c2w for f in frames])
    frames = [f.with_(depth=None, c2w=None) for f in frames]
    opts = {"threads": threads, "dense": "none"}
    if legacy:
        opts.update(mapper="incremental", sift_peak_threshold=0.02 / 3, join_models=False)
    t = time.perf_counter()
    recon = SfMBackend(**opts).run(frames, progress=False)
    wall = time.perf_counter() - t
    a = ate(recon.c2w, gt, align="sim3")
    m = recon.metadata
    return {"config": spec, "frames": n, "keyframes": len(recon.keyframes), "sfm_registered": m["sfm_registered"],
            "pnp": m["pnp_registered"], "interpolated": m["interpolated"], "models": m["num_models"],
            "joined_models": m.get("joined_models", 0), "ate_sim3_cm": a["rmse"] * 100,
            "ate_sim3_max_cm": a["max"] * 100, "path_m": float(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum()),
            "reproj_px": m["mean_reprojection_error_px"], "features_median": m["features_per_image_median"],
            "wall_s": wall, **{k: recon.timings.get(k, float("nan")) for k in STAGES}}


def run_config(spec: str, threads: int, colmap: bool, fusion: str = "points") -> dict:
    if spec.startswith("holo:"):
        return run_holo(spec, threads)
    import numpy as np

    from forward3d.data.synthetic import SyntheticScene
    from forward3d.eval.traj import ate
    from forward3d.mvs import MVSConfig
    from forward3d.pipelines.sfm import SfMBackend, mvs_available

    size, n = spec.split(":")
    w, h = (int(v) for v in size.split("x"))
    n = int(n)
    scene = SyntheticScene(num_frames=n, width=w, height=h)
    frames = [f.with_(depth=None) for f in scene.frames()]
    gt = np.stack([f.c2w for f in frames])
    backend = SfMBackend(threads=threads, dense="auto", mvs=MVSConfig(fusion=fusion))
    t = time.perf_counter()
    recon = backend.run(frames, progress=False)
    wall = time.perf_counter() - t
    a = ate(recon.c2w, gt, align="sim3")
    row = {"config": spec, "frames": n, "keyframes": len(recon.keyframes),
           "pnp": recon.metadata["pnp_registered"], "interpolated": recon.metadata["interpolated"],
           "ate_sim3_cm": a["rmse"] * 100, "reproj_px": recon.metadata["mean_reprojection_error_px"],
           "wall_s": wall, "dense": "mvs" if mvs_available() else "none (forward3d.mvs missing)",
           **{k: recon.timings.get(k, float("nan")) for k in STAGES}}
    if "dense_s" in recon.timings and recon.metadata.get("dense_views"):
        row["dense_per_keyframe_s"] = recon.timings["dense_s"] / recon.metadata["dense_views"]
    row["fusion"] = fusion
    if recon.points is not None and mvs_available():
        row.update(_surface_scores(recon, scene, frames, a["alignment"]))
    if colmap:
        from forward3d.io.video import write_png

        with tempfile.TemporaryDirectory() as tmp:
            names = []
            for k in recon.keyframes:
                names.append(f"{k:06d}.png")
                write_png(Path(tmp) / names[-1], frames[k].image)
            matching = "exhaustive" if recon.metadata["matching"] == "exhaustive" else "sequential"
            row.update(_colmap_cli(Path(tmp), names, matching, threads, frames[0].K))
        if "colmap_sfm_s" in row:
            ours = row["extract_s"] + row["match_s"] + row["map_s"]
            row["sfm_s"] = ours
            row["ratio_vs_colmap"] = ours / row["colmap_sfm_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["640x480:50"], help="WxH:FRAMES")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--colmap", action="store_true", help="also time the colmap command line (if installed)")
    ap.add_argument("--fusion", choices=["points", "tsdf"], default="points", help="dense fusion (MVSConfig.fusion)")
    ap.add_argument("--out", default="sfm_mvs.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    rows = [run_config(spec, args.threads, args.colmap, args.fusion) for spec in args.configs]
    print_table(rows, ["config", "keyframes", "pnp", "ate_sim3_cm", "reproj_px", *STAGES, "ratio_vs_colmap"])
    print_table(rows, ["config", "fusion", "cloud_accuracy_median", "cloud_completion_median", "mesh_accuracy_median",
                       "mesh_completion_median", "mesh_fscore_at_0.02"])
    path = write_json(args.out, {"machine": machine_info(), "threads": args.threads, "rows": rows})
    print(f"wrote {path}")
    print(json.dumps(rows, indent=1, default=str)[:2000])


if __name__ == "__main__":
    main()
