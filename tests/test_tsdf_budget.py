"""The TSDF voxel-block budget (issue 11): on a long walk through a large scene the resident blocks
stay under ``max_blocks``, the far blocks go to a spool on disk, and the final cloud and mesh, merged
back from the spool, are the ones an unbounded TSDF gives (the whole scene, revisits included)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytest.importorskip("open3d")

from scipy.spatial import cKDTree  # noqa: E402

from forward3d.data.synthetic import SyntheticConfig, SyntheticScene  # noqa: E402
from forward3d.eval.recon import recon_metrics  # noqa: E402
from forward3d.pipelines.rgbd import RGBDBackend, RGBDConfig  # noqa: E402
from forward3d.pipelines.tsdf import TSDFVolume  # noqa: E402

VOXEL = 0.08
BUDGET = 350  # blocks; the whole walk allocates about 800, one frame up to 300


@pytest.fixture(scope="module")
def walk():
    """A 16 x 3 x 6 m room, 30 frames at 120x90 walking 11 m along it, then 10 frames back (a revisit
    of streamed-out blocks); the unbounded TSDF of the same frames as the reference."""
    scene = SyntheticScene(SyntheticConfig(num_frames=30, width=120, height=90, room_size=(16.0, 3.0, 6.0),
                                           trajectory="walk", speed=8.0))
    frames = list(scene.frames())
    frames = frames + frames[::-3]
    ref = TSDFVolume(VOXEL, 4 * VOXEL, block_count=512)
    for f in frames:
        ref.integrate(f.depth, f.image, f.K, f.c2w)
    return scene, frames, ref


def _same_cloud(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> None:
    assert abs(len(a) - len(b)) <= max(2, len(a) // 1000), (len(a), len(b))
    assert cKDTree(a).query(b)[0].max() < tol and cKDTree(b).query(a)[0].max() < tol


def test_block_budget_bounds_memory_and_keeps_the_whole_scene(walk, tmp_path):
    scene, frames, ref = walk
    assert ref.num_blocks > 2 * BUDGET  # the budget has to bite
    vol = TSDFVolume(VOXEL, 4 * VOXEL, block_count=512, max_blocks=BUDGET, spool_dir=str(tmp_path / "spool"))
    resident = []
    for f in frames:
        vol.integrate(f.depth, f.image, f.K, f.c2w)
        resident.append(vol.num_blocks)
    assert max(resident) <= BUDGET and vol.peak_blocks <= BUDGET
    assert vol.grid.hashmap().capacity() == 512  # the hash map never grew (allocated once)
    assert vol.stream_outs >= 3 and vol.spooled_blocks > ref.num_blocks - BUDGET
    assert any((tmp_path / "spool").glob("*.npz"))
    # streamed-out blocks re-allocated on the way back are merged with their spooled copies by weight:
    # the surface is the unbounded one, point for point
    pc, pc_ref = vol.point_cloud(1.0), ref.point_cloud(1.0)
    _same_cloud(pc.points, pc_ref.points)
    nearest = cKDTree(pc_ref.points).query(pc.points)[1]
    assert np.abs(pc.colors.astype(int) - pc_ref.colors[nearest].astype(int)).max() <= 1
    m, m_ref = vol.mesh(1.0), ref.mesh(1.0)
    assert abs(len(m.faces) - len(m_ref.faces)) <= len(m_ref.faces) // 1000
    _same_cloud(m.vertices, m_ref.vertices)
    gt = scene.surface_points(VOXEL / 2, visible_only=True)
    s, s_ref = recon_metrics(m.vertices, gt), recon_metrics(m_ref.vertices, gt)
    assert s["recall@0.05"] == pytest.approx(s_ref["recall@0.05"], abs=1e-3) and s["recall@0.05"] > 0.5
    # the resident-only surface (what tracking sees) is the part near the last camera
    near = vol.point_cloud(1.0, resident_only=True)
    assert 0 < len(near) < 0.7 * len(pc)


def test_temporary_spool_is_deleted_with_the_volume(walk):
    _, frames, _ = walk
    vol = TSDFVolume(VOXEL, 4 * VOXEL, block_count=512, max_blocks=BUDGET)
    for f in frames[:25]:
        vol.integrate(f.depth, f.image, f.K, f.c2w)
    folder = vol.spool.dir
    assert folder.is_dir() and any(folder.iterdir())
    del vol
    gc.collect()
    assert not folder.exists()
    with pytest.raises(ValueError, match="max_blocks"):
        TSDFVolume(VOXEL, 4 * VOXEL, max_blocks=-1)


def test_rgbd_backend_max_blocks(walk, capsys):
    """``RGBDConfig.max_blocks`` (``--max-blocks``): the back-end's TSDF stays under budget and its
    cloud is the unbounded TSDF's."""
    _, frames, ref = walk
    rec = RGBDBackend(use_gt_poses=True, voxel_size=VOXEL, max_blocks=BUDGET, block_count=512).run(frames,
                                                                                                   progress=False)
    meta = rec.metadata
    assert meta["num_voxel_blocks"] <= BUDGET and meta["spooled_voxel_blocks"] > 0 and meta["block_stream_outs"] >= 3
    _same_cloud(rec.points.points, ref.point_cloud(meta["weight_threshold"]).points)
    with pytest.raises(ValueError, match="max_blocks"):
        RGBDConfig(max_blocks=-5)
    from forward3d.cli import main

    with pytest.raises(SystemExit):
        main(["recon", "x", "--backend", "rgbd", "--help"])
    assert "--max-blocks" in capsys.readouterr().out
