"""``forward3d data prepare / check``: ScanNet .sens export, ScanNet++ DSLR undistortion and iPhone
decoding (checked against the synthetic ground truth), resumability, checksums, failures, CLI."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from fake_layouts import (
    encode_depth_bin,
    write_sens,
    write_scannetpp_dslr,
    write_scannetpp_iphone,
)
from forward3d.cli import main as cli_main
from forward3d.data.prepare import INDEX_NAME, PrepareConfig, check, prepare
from forward3d.data.sequence import get_dataset_class
from forward3d.data.synthetic import SyntheticScene
from forward3d.io.scannetpp import iter_iphone_depth
from test_data_readers import agree



@functools.lru_cache(maxsize=4)
def _scene(seed=0, n=12, w=64, h=48):
    return SyntheticScene(num_frames=n, width=w, height=h, seed=seed, trajectory="handheld")


# --------------------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------------------


def _scannet_raw(tmp_path, n_scenes=3, truncate_last=False):
    raw = tmp_path / "raw"
    for k in range(n_scenes):
        frames = list(_scene(k, 6).frames())
        write_sens(raw / "scans" / f"scene000{k}_00" / f"scene000{k}_00.sens", frames, color_size=(96, 72),
                   truncate=900 if (truncate_last and k == n_scenes - 1) else 0)
    (raw / "scannetv2_train.txt").write_text("".join(f"scene000{k}_00\n" for k in range(n_scenes)))
    return raw


def test_scannet_prepare_resume_and_check(tmp_path):
    raw, out = _scannet_raw(tmp_path), tmp_path / "out"
    rep = prepare(PrepareConfig("scannet", str(raw), str(out), frame_skip=2, progress=False))
    assert sorted(rep.done) == ["scene0000_00", "scene0001_00", "scene0002_00"] and not rep.failed
    assert rep.files == 3 * (3 * 3 + 4)
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["dataset"] == "scannet" and all(e["status"] == "done" for e in index["scenes"].values())
    assert (out / "scannetv2_train.txt").is_file()
    assert check(out).ok
    # the export is what the ScanNet reader reads, and it agrees with the ground truth
    ds = get_dataset_class("ScanNet")(root=str(out), split="train", num_views=2, resolution=(64, 48))
    assert ds.sequences[1].names == ["0", "2", "4"]
    agree(ds.view("scene0001_00", 2), _scene(1, 6))
    # resumable: a second run skips everything
    again = prepare(PrepareConfig("scannet", str(raw), str(out), frame_skip=2, progress=False))
    assert sorted(again.skipped) == sorted(rep.done) and not again.done
    # damage: a missing file and a flipped byte are reported; the next prepare redoes that scene only
    (out / "scene0001_00" / "depth" / "2.png").unlink()
    jpg = out / "scene0002_00" / "color" / "0.jpg"
    data = bytearray(jpg.read_bytes())
    data[100] ^= 0xFF
    jpg.write_bytes(bytes(data))
    rep2 = check(out)
    assert not rep2.ok and rep2.missing == ["scene0001_00/depth/2.png"]
    assert [p for p, _ in rep2.corrupt] == ["scene0002_00/color/0.jpg"] and "SHA-256" in rep2.corrupt[0][1]
    assert "MISSING scene0001_00/depth/2.png" in rep2.summary()
    quick = check(out, checksums=False)
    assert quick.missing and not quick.corrupt  # same size: only the checksum sees the flipped byte
    redo = prepare(PrepareConfig("scannet", str(raw), str(out), frame_skip=2, progress=False))
    assert redo.done == ["scene0001_00"]  # the verify pass found its missing file
    full = prepare(PrepareConfig("scannet", str(raw), str(out), frame_skip=2, overwrite=True, progress=False))
    assert len(full.done) == 3 and check(out).ok


def test_scannet_prepare_interrupted_download(tmp_path):
    raw, out = _scannet_raw(tmp_path, 2, truncate_last=True), tmp_path / "out"
    rep = prepare(PrepareConfig("scannet", str(raw), str(out), progress=False))
    assert rep.done == ["scene0000_00"] and list(rep.failed) == ["scene0001_00"]
    assert "truncated .sens file" in rep.failed["scene0001_00"]
    rc = check(out)
    assert not rc.ok and "scene0001_00" in rc.failed and rc.scenes_ok == ["scene0000_00"]
    # an interrupted PREPARE (scene marked running) is reported unfinished and redone
    index = json.loads((out / INDEX_NAME).read_text())
    index["scenes"]["scene0000_00"] = {"status": "running"}
    (out / INDEX_NAME).write_text(json.dumps(index))
    assert check(out).incomplete == ["scene0000_00"]
    assert "scene0000_00" in prepare(PrepareConfig("scannet", str(raw), str(out), progress=False)).done


def test_prepare_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'co3d'"):
        prepare(PrepareConfig("co3d", str(tmp_path), str(tmp_path / "o")))
    with pytest.raises(ValueError, match="does not exist"):
        prepare(PrepareConfig("scannet", str(tmp_path / "nope"), str(tmp_path / "o")))
    with pytest.raises(ValueError, match="no scene found"):
        prepare(PrepareConfig("scannet", str(tmp_path), str(tmp_path / "o"), progress=False))
    raw = _scannet_raw(tmp_path, 1)
    with pytest.raises(ValueError, match=r"scenes \['x'\] not found"):
        prepare(PrepareConfig("scannet", str(raw), str(tmp_path / "o"), scenes=("x",), progress=False))
    with pytest.raises(ValueError, match="frame_skip"):
        prepare(PrepareConfig("scannet", str(raw), str(tmp_path / "o"), frame_skip=0))
    with pytest.raises(ValueError, match="not a folder written by"):
        check(tmp_path)
    prepare(PrepareConfig("scannet", str(raw), str(tmp_path / "o"), progress=False))
    with pytest.raises(ValueError, match="holds prepared 'scannet', not 'scannetpp'"):
        prepare(PrepareConfig("scannetpp", str(raw), str(tmp_path / "o"), progress=False))


def test_cli(tmp_path, capsys):
    raw, out = _scannet_raw(tmp_path, 1), tmp_path / "out"
    assert cli_main(["data", "prepare", "scannet", str(raw), str(out), "--frame-skip", "3", "--no-progress"]) == 0
    assert "1 scenes prepared" in capsys.readouterr().out
    assert cli_main(["data", "check", str(out), "--decode", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    (out / "scene0000_00" / "pose" / "3.txt").write_text("garbage")
    assert cli_main(["data", "check", str(out), "--no-progress"]) == 1
    assert "CORRUPT scene0000_00/pose/3.txt" in capsys.readouterr().out
    assert cli_main(["data", "check", str(tmp_path)]) == 2  # not a prepared folder: one-line error
    assert "not a folder written by" in capsys.readouterr().err
    assert cli_main(["data", "list"]) == 0 and "ScanNetpp  (also:" in capsys.readouterr().out
    assert cli_main(["data", "mix", "3 @ Synthetic(num_views=2, foo=1)"]) == 2
    assert "unknown key `foo`" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# ScanNet++
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["global", "lz4", "deflate"])
def test_iphone_depth_bin_encodings(tmp_path, form):
    rng = np.random.default_rng(0)
    depths = [rng.uniform(0.2, 5.0, (192, 256)).astype(np.float32) for _ in range(5)]
    depths[1][:10] = 0.0
    (tmp_path / "depth.bin").write_bytes(encode_depth_bin(depths, form))
    got = list(iter_iphone_depth(tmp_path / "depth.bin", every=2))
    assert [k for k, _ in got] == [0, 2, 4]
    tol = 0.0005 if form == "lz4" else 1e-6  # lz4 holds millimetres
    for k, d in got:
        np.testing.assert_allclose(d, depths[k], atol=tol)
    data = (tmp_path / "depth.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) - 50])
    with pytest.raises(ValueError, match="truncated|ends inside|trailing"):
        list(iter_iphone_depth(tmp_path / "cut.bin"))


def _fisheye_camera(w, h):
    K = np.array([[0.62 * w, 0.0, w / 2 + 0.7], [0.0, 0.62 * w, h / 2 - 0.4], [0.0, 0.0, 1.0]])
    return K, np.array([0.05, -0.01, 0.002, -0.0005])


def _fisheye_project(K, dist, x, y):
    """OPENCV_FISHEYE (Kannala-Brandt) projection of normalised points, COLMAP pixel convention."""
    r = np.hypot(x, y)
    th = np.arctan(r)
    k1, k2, k3, k4 = dist
    thd = th * (1 + k1 * th**2 + k2 * th**4 + k3 * th**6 + k4 * th**8)
    s = np.where(r > 1e-12, thd / np.maximum(r, 1e-12), 1.0)
    return K[0, 0] * s * x + K[0, 2], K[1, 1] * s * y + K[1, 2]


def test_undistort_maps_pixel_convention():
    from forward3d.data.prepare import undistort_maps

    K, dist = _fisheye_camera(96, 72)
    new_K, mx, my = undistort_maps(K, dist, 96, 72)
    v, u = np.mgrid[0:72, 0:96] + 0.5  # undistorted pixel centres
    x, y = (u - new_K[0, 2]) / new_K[0, 0], (v - new_K[1, 2]) / new_K[1, 1]
    fu, fv = _fisheye_project(K, dist, x, y)
    # OpenCV's map holds the source pixel INDEX (centre at 0): coordinate = index + 0.5
    np.testing.assert_allclose(mx + 0.5, fu, atol=2e-3)
    np.testing.assert_allclose(my + 0.5, fv, atol=2e-3)
    assert new_K[0, 0] < K[0, 0]  # balance=0 keeps every output pixel inside the fisheye image


def test_scannetpp_prepare_and_read(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    scene = _scene(3, 12, 64, 48)
    sd = raw / "data" / "0a5c013435"
    K, dist = _fisheye_camera(96, 72)
    write_scannetpp_dslr(sd, scene, list(range(10)), (96, 72), K, dist, test={4})
    write_scannetpp_iphone(sd, scene, 12, (96, 72), depth_form="lz4")
    (raw / "splits").mkdir()
    (raw / "splits" / "nvs_sem_train.txt").write_text("0a5c013435\n")
    (raw / "splits" / "nvs_sem_val.txt").write_text("")
    # before preparing: no undistorted DSLR, no extracted iPhone frames -> nothing to read
    with pytest.raises(ValueError, match="no sequence found"):
        get_dataset_class("ScanNetpp")(root=str(raw), num_views=2)
    rep = prepare(PrepareConfig("scannetpp", str(raw), str(out), iphone_every=2, progress=False))
    assert rep.done == ["0a5c013435"] and not rep.failed
    assert check(out, decode=True).ok
    tf = json.loads((out / "data/0a5c013435/dslr/nerfstudio/transforms_undistorted.json").read_text())
    assert tf["camera_model"] == "PINHOLE" and tf["k1"] == 0.0 and len(tf["frames"]) == 9
    D = get_dataset_class("ScanNetpp_Seq")
    ds = D(root=str(out), split="train", num_views=3, resolution=(64, 48), filter=True)
    assert [s.scene for s in ds.sequences] == ["0a5c013435/iphone", "0a5c013435/dslr"]
    dslr = ds.sequences[1]
    assert "DSC00005.JPG" not in dslr.names and len(dslr.names) == 9  # the test image is left out
    assert ds.sequences[0].names == [f"frame_{k:06d}.jpg" for k in range(0, 12, 2)]
    # the undistorted DSLR view agrees with a pinhole render of the scene (fisheye -> pinhole works);
    # its depth went through three nearest-neighbour resamplings (fake fisheye, undistortion, resize)
    v = ds.view("0a5c013435/dslr", 2)
    agree(v, scene, image_tol=14.0, min_valid=0.6, depth_median=0.02, depth_mean=0.04)
    assert not v.valid[23:25, 31:33].any()  # the anonymised block of the mask
    # iPhone: 96x72 video frames + 256x192 LiDAR depth; poses from pose_intrinsic_imu.json
    agree(ds.view("0a5c013435/iphone", 3), scene, image_tol=10.0)
    s = ds[0]
    assert len(s.views) == 3 and s.views[0].image.shape == (48, 64, 3)
    # the DSLR-only and the iPhone-only readers
    only = D(root=str(out), split="train", num_views=2, resolution=(64, 48), img_types=("dslr",))
    assert [s.scene for s in only.sequences] == ["0a5c013435/dslr"]
    with pytest.raises(ValueError, match="img_types"):
        D(root=str(out), img_types=("lidar",))


def test_scannetpp_missing_parts_fail_the_scene(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    scene = _scene(3, 12, 64, 48)
    K, dist = _fisheye_camera(96, 72)
    write_scannetpp_dslr(raw / "data" / "aaa", scene, [0, 1, 2], (96, 72), K, dist, render_depth=False)
    write_scannetpp_dslr(raw / "data" / "bbb", scene, [0, 1, 2], (96, 72), K, dist)
    (raw / "data" / "bbb" / "dslr" / "resized_images" / "DSC00002.JPG").unlink()  # interrupted download
    rep = prepare(PrepareConfig("scannetpp", str(raw), str(out), iphone=False, progress=False))
    assert rep.done == ["aaa"] and "missing DSLR image" in rep.failed["bbb"]
    assert not (out / "data" / "aaa" / "dslr" / "undistorted_depth").exists()  # no rendered depth to undistort
