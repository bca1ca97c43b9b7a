"""The built-in benchmark protocols, with the published numbers of ``shared/specs/benchmarks.md``.

Numbers marked ``(2nd)`` come from another paper's table, not the original one. Compare numbers only
within one protocol.
"""

from __future__ import annotations

import dataclasses

from forward3d.bench.protocol import PROTOCOLS, Protocol, Published, ReconAlignment, register_protocol
from forward3d.eval.nvs import PUBLISHED_RE10K_1VIEW
from forward3d.eval.nvs_2view import PUBLISHED_RE10K_2VIEW

TRAJ_METRICS = ("ate_rmse", "ate_mean", "ate_median", "rpe_trans_rmse", "rpe_rot_rmse_deg", "scale")
RECON_METRICS = ("accuracy", "completion", "normal_consistency", "accuracy_median", "completion_median",
                 "chamfer", "fscore@0.05")

register_protocol(Protocol(
    "tum-ate", "trajectory", "TUM RGB-D: ATE RMSE after Sim(3) Umeyama alignment (evo -as), every frame",
    layouts=("tum",), metrics=TRAJ_METRICS,
    published=(Published("MASt3R-SLAM paper", "MASt3R-SLAM (calibrated)", {"ate_rmse": 0.030}, "fr1 average"),
               Published("MASt3R-SLAM paper", "MASt3R-SLAM (uncalibrated)", {"ate_rmse": 0.060}, "fr1 average"),
               Published("CUT3R paper", "CUT3R", {"ate_rmse": 0.046}, "TUM-dynamics sequences")),
))

register_protocol(Protocol(
    "7scenes-ate", "trajectory", "7-Scenes: ATE RMSE after Sim(3) Umeyama alignment (evo -as), every frame",
    layouts=("7scenes",), metrics=TRAJ_METRICS,
    published=(Published("MASt3R-SLAM paper", "MASt3R-SLAM (calibrated)", {"ate_rmse": 0.047}),
               Published("MASt3R-SLAM paper", "MASt3R-SLAM (uncalibrated)", {"ate_rmse": 0.066})),
))

register_protocol(Protocol(
    "ate", "trajectory", "any posed RGB(-D) sequence: ATE RMSE after Sim(3) Umeyama alignment (evo -as)",
    layouts=("tum", "7scenes", "replica", "scannet", "redwood", "posed", "nrgbd"), metrics=TRAJ_METRICS,
    notes="no published numbers: for a user's own captures",
))

_SPANN3R_ALIGN = ReconAlignment("median-first-icp", icp_threshold=0.1)

register_protocol(Protocol(
    "7scenes-spann3r", "reconstruction",
    "Spann3R on 7-Scenes: 224x224 crops, every 20th frame, median scale + GT camera 1 + point-to-point ICP (0.1 m)",
    layouts=("7scenes",), stride=20, crop=(224, 224), recon=_SPANN3R_ALIGN, metrics=RECON_METRICS,
    published=(Published("Spann3R paper", "Spann3R", {"accuracy": 0.0342, "completion": 0.0241,
                                                      "normal_consistency": 0.664}),
               Published("Spann3R paper", "DUSt3R-GA", {"accuracy": 0.0286, "completion": 0.0280,
                                                        "normal_consistency": 0.668})),
))

register_protocol(Protocol(
    "nrgbd-spann3r", "reconstruction",
    "Spann3R on Neural RGB-D: 224x224 crops, every 40th frame, median scale + GT camera 1 + point-to-point ICP (0.1 m)",
    layouts=("nrgbd",), stride=40, crop=(224, 224), recon=_SPANN3R_ALIGN, metrics=RECON_METRICS,
    published=(Published("Spann3R paper", "Spann3R", {"accuracy": 0.0691, "completion": 0.0291,
                                                      "normal_consistency": 0.778}),
               Published("Spann3R paper", "DUSt3R-GA", {"accuracy": 0.0544, "completion": 0.0315,
                                                        "normal_consistency": 0.802})),
))

_CUT3R_PUBLISHED = {  # (7-Scenes, NRGBD) accuracy / completion / NC, from the CUT3R paper's table (2nd)
    "CUT3R": ((0.126, 0.154, 0.727), (0.099, 0.076, 0.837)),
    "CUT3R second pass": ((0.113, 0.107, 0.732), (0.094, 0.076, 0.844)),
    "Spann3R": ((0.298, 0.205, 0.650), (0.416, 0.417, 0.684)),
}


def _cut3r_published(dataset: int) -> tuple[Published, ...]:
    keys = ("accuracy", "completion", "normal_consistency")
    return tuple(Published("CUT3R paper (2nd)", method, dict(zip(keys, vals[dataset])))
                 for method, vals in _CUT3R_PUBLISHED.items())


register_protocol(dataclasses.replace(
    PROTOCOLS["7scenes-spann3r"], name="7scenes-cut3r",
    title="CUT3R on 7-Scenes: every 200th frame, 512x384 input, centre 224x224 scored, median scale + GT camera 1 "
          "+ point-to-point ICP (0.1 m) as Spann3R",
    stride=200, crop=(512, 384), score_crop=(224, 224), published=_cut3r_published(0),
))

register_protocol(dataclasses.replace(
    PROTOCOLS["nrgbd-spann3r"], name="nrgbd-cut3r",
    title="CUT3R on Neural RGB-D: every 500th frame, 512x384 input, centre 224x224 scored, median scale + GT "
          "camera 1 + point-to-point ICP (0.1 m) as Spann3R",
    stride=500, crop=(512, 384), score_crop=(224, 224), published=_cut3r_published(1),
))

_SLAM3R_ALIGN = ReconAlignment("ransac-umeyama-icp", icp_threshold=0.1, plane_icp_threshold=0.02,
                               voxel_size=0.005, conf_threshold=3.0, num_pairs=200_000)

register_protocol(Protocol(
    "replica-slam3r", "reconstruction",
    "SLAM3R on Replica: every frame, conf > 3, RANSAC Umeyama Sim(3) on 200k pixel-aligned pairs, "
    "point-to-plane ICP (0.02 m), 5 mm voxels, point-to-point ICP (0.1 m)",
    layouts=("replica",), recon=_SLAM3R_ALIGN, metrics=RECON_METRICS,
    published=(Published("SLAM3R paper (2nd)", "SLAM3R", {"accuracy": 0.0357, "completion": 0.0262}),),
    notes="methods without point maps are first aligned by Sim(3) Umeyama on their camera centres",
))

register_protocol(Protocol(
    "7scenes-slam3r", "reconstruction",
    "SLAM3R on 7-Scenes: every 20th frame, conf > 3, RANSAC Umeyama Sim(3), point-to-plane ICP (0.02 m), "
    "5 mm voxels, point-to-point ICP (0.1 m)",
    layouts=("7scenes",), stride=20, recon=_SLAM3R_ALIGN, metrics=RECON_METRICS,
    published=(Published("SLAM3R paper (2nd)", "SLAM3R", {"accuracy": 0.0213, "completion": 0.0234}),),
    notes="methods without point maps are first aligned by Sim(3) Umeyama on their camera centres",
))

register_protocol(Protocol(
    "re10k-1view", "nvs",
    "RealEstate10K single view (Flash3D / MINE): +5, +10, random targets, 5% crop, PSNR / SSIM / LPIPS",
    layouts=("re10k",),
    metrics=("psnr_+5", "psnr_+10", "psnr_random", "ssim_+5", "ssim_+10", "ssim_random",
             "lpips_+5", "lpips_+10", "lpips_random"),
    published=tuple(Published("Flash3D paper", method, {f"{m}_{kind}": v for kind, vals in d.items()
                                                        for m, v in zip(("psnr", "ssim", "lpips"), vals)})
                    for method, d in PUBLISHED_RE10K_1VIEW.items()),
    notes="runs forward3d.eval.nvs (forward3d eval nvs) over the split file; one result per RE10K sequence",
))

register_protocol(Protocol(
    "re10k-2view", "nvs",
    "RealEstate10K two views (pixelSplat / MVSplat / DepthSplat): evaluation index (2 context + 3 targets), "
    "360x640 -> 256x455 -> centre crop 256x256, PSNR / SSIM / LPIPS averaged over targets, then scenes",
    layouts=("re10k-chunks",), metrics=("psnr", "ssim", "lpips"),
    published=tuple(Published("DepthSplat paper (2nd)" if m.startswith("DepthSplat") else f"{m} paper", m,
                              dict(zip(("psnr", "ssim", "lpips"), v))) for m, v in PUBLISHED_RE10K_2VIEW.items()),
    notes="runs forward3d.eval.nvs_2view (forward3d eval nvs --protocol re10k-2view) over the evaluation index; "
          "--backend depthsplat --weights CKPT, or oracle / blank; the scenes the protocol skips are listed in "
          "summary.json (skipped_scenes)",
))

EXTRAPOLATION_METRICS = ("mae", "coverage", "num_pairs")

register_protocol(Protocol(
    "scannet-extrapolation", "extrapolation",
    "Invisible Stitch on ScanNet (scenes 0000-0049): every 50th frame i lifted with GT depth into frame i+10, "
    "mean absolute depth error (m) of the completed depth on the pixels it does not cover",
    layouts=("scannet",), stride=50, pair_offset=10, metrics=EXTRAPOLATION_METRICS,
    notes="--backend is the depth-completion method (aligned, zoedepth, oracle); --no-sparse: no sparse input; "
          "the paper's table is not in the spec, so no published numbers are shown",
))

register_protocol(Protocol(
    "hypersim-extrapolation", "extrapolation",
    "Invisible Stitch on Hypersim: frame i lifted with GT depth into frame i+1 of the same camera, pairs where "
    "frame i covers >= 80% of frame i+1, mean absolute depth error (m) on the pixels it does not cover",
    layouts=("hypersim",), stride=1, pair_offset=1, min_coverage=0.8, metrics=EXTRAPOLATION_METRICS,
    notes="--backend is the depth-completion method (aligned, zoedepth, oracle); the >= 80% rule is the paper's, "
          "taking consecutive frames of each camera as the candidate pairs is ours; no published numbers in the spec",
))

register_protocol(Protocol(
    "extrapolation", "extrapolation",
    "the Invisible Stitch protocol on any posed RGB-D sequence: frame i (every 50th) lifted into frame i+10",
    layouts=("tum", "7scenes", "replica", "scannet", "redwood", "posed", "nrgbd", "hypersim"), stride=50, pair_offset=10,
    metrics=EXTRAPOLATION_METRICS, notes="no published numbers: for a user's own captures",
))
