"""The RealEstate10K two-view protocol (``re10k-2view``) on a synthetic stand-in of the pixelSplat layout:
chunks of 360x640 JPEG frames with [N, 18] cameras, an evaluation index (2 context + 3 targets, a null entry,
a scene not in the chunks, a scene with frames of another size). The oracle scores 100 dB, a blank method
does not; DepthSplat (the parity fixture's random tiny weights) runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forward3d.bench.protocol import get_protocol
from forward3d.bench.runner import BenchConfig, run_benchmark
from forward3d.cli import main
from forward3d.data.re10k_chunks import RE10KChunks, decode_cameras, encode_cameras, write_re10k_chunks
from forward3d.data.synthetic import SyntheticScene
from forward3d.eval.nvs import NVSEvalConfig, run_nvs_eval
from forward3d.eval.nvs_2view import RE10K2ViewDataset, score_targets


@pytest.fixture(scope="module")
def re10k(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k2")
    scenes = {f"scene{i}": SyntheticScene(num_frames=9, width=640, height=360, seed=20 + i, speed=0.5)
              for i in range(3)}
    scenes["small"] = SyntheticScene(num_frames=9, width=320, height=180, seed=30)
    write_re10k_chunks(root, scenes, split="test", per_chunk=2)
    index = {"scene0": {"context": [0, 8], "target": [2, 4, 6]}, "scene1": {"context": [1, 7], "target": [3, 4, 5]},
             "scene2": {"context": [0, 6], "target": [1, 3, 5]}, "nulled": None,
             "absent": {"context": [0, 1], "target": [2]}, "small": {"context": [0, 8], "target": [4]}}
    (root / "evaluation_index_re10k.json").write_text(json.dumps(index))
    return root, scenes


def test_cameras_round_trip_and_chunks(re10k):
    root, scenes = re10k
    rng = np.random.default_rng(0)
    sc = scenes["scene1"]
    K = np.array([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]])[None].repeat(3, 0)
    Kb, c2w = decode_cameras(encode_cameras(K, sc.c2w[:3]))
    assert np.allclose(Kb, K, atol=1e-6) and np.allclose(c2w, sc.c2w[:3], atol=1e-5)
    chunks = RE10KChunks(root, "test")
    assert sorted(chunks.keys()) == ["scene0", "scene1", "scene2", "small"]
    s = chunks.scene("scene1")
    assert len(s) == 9 and s.image(4).shape == (360, 640, 3) and np.allclose(s.c2w, sc.c2w, atol=1e-5)
    assert np.abs(s.image(4).astype(float) - sc.frame(4).image).mean() < 4  # JPEG
    with pytest.raises(ValueError, match="frame 9"):
        s.image(9)
    bad = root / "bad" / "test"
    bad.mkdir(parents=True)
    (bad / "000000.torch").write_bytes(rng.bytes(64))
    with pytest.raises(ValueError, match="000000.torch: not a readable RE10K chunk"):
        RE10KChunks(root / "bad", "test")


def test_dataset_crop_shim_and_skips(re10k):
    root, scenes = re10k
    ds = RE10K2ViewDataset(root, root / "evaluation_index_re10k.json")
    assert len(ds) == 4 and any("nulled" in s for s in ds.skipped) and any("absent" in s for s in ds.skipped)
    sample = ds.load(0)
    assert sample.images.shape == (5, 3, 256, 256) and sample.context == [0, 8] and sample.target == [2, 4, 6]
    K0 = scenes["scene0"].K
    # 360x640 -> 256x455 -> crop 256x256: normalised fx * 455 / 256, fy unchanged, principal point kept
    assert sample.K_norm[0, 0, 0].item() == pytest.approx(K0[0, 0] / 640 * 455 / 256, rel=1e-5)
    assert sample.K_norm[0, 1, 1].item() == pytest.approx(K0[1, 1] / 360, rel=1e-5)
    assert sample.K_norm[0, 0, 2].item() == pytest.approx(0.5, abs=1e-5)
    assert ds.load(3) is None and "small: frames [180, 320], not [360, 640]" in ds.skipped[-1]
    p = torch.rand(3, 3, 32, 32)
    m = score_targets(p, p)
    assert np.allclose(m["psnr"], 100.0) and np.allclose(m["ssim"], 1.0)
    with pytest.raises(ValueError, match="one shape"):
        score_targets(p, p[:2])


def test_bench_re10k_2view_oracle_high_blank_low(re10k, tmp_path):
    root, _ = re10k
    assert get_protocol("re10k-2view").task == "nvs"
    res = run_benchmark(BenchConfig("re10k-2view", data=str(root), backend="oracle", out=str(tmp_path / "o"),
                                    plots=False))
    assert res.summary["mean"]["psnr"] == pytest.approx(100.0) and res.summary["mean"]["ssim"] == pytest.approx(1.0)
    assert sorted(res.ran) == ["scene0", "scene1", "scene2"] and not res.failed
    assert len(res.summary["skipped_scenes"]) == 3  # null, absent, 180x320: skipped by the protocol, listed
    blank = run_benchmark(BenchConfig("re10k-2view", data=str(root), backend="blank", out=str(tmp_path / "b"),
                                      plots=False))
    assert blank.summary["mean"]["psnr"] < 15 and blank.summary["mean"]["ssim"] < 0.3
    table = (tmp_path / "b" / "summary.md").read_text()
    assert "published: DepthSplat paper (2nd) | DepthSplat-L | 27.4700 | 0.8890 | 0.1140" in table
    assert "published: pixelSplat paper | pixelSplat | 26.0900" in table
    with pytest.raises(ValueError, match="depthsplat: give the checkpoint with --weights"):
        run_benchmark(BenchConfig("re10k-2view", data=str(root), backend="depthsplat", out=str(tmp_path / "d"),
                                  plots=False))
    with pytest.raises(ValueError, match="expects one of depthsplat, oracle, blank"):
        run_benchmark(BenchConfig("re10k-2view", data=str(root), backend="flash3d", out=str(tmp_path / "d"),
                                  plots=False))


def test_eval_nvs_2view_depthsplat_random_weights(re10k, shared_dir, tmp_path, capsys, one_thread):
    root, _ = re10k
    weights = shared_dir / "fixtures" / "depthsplat" / "weights.safetensors"
    out = tmp_path / "r.json"
    rc = main(["eval", "nvs", "--protocol", "re10k-2view", "--data", str(root), "--weights", str(weights),
               "--height", "64", "--max-lines", "1", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "depthsplat (ours)" in printed and "DepthSplat-L (published)" in printed
    r = json.loads(out.read_text())
    assert r["num_scenes"] == 1 and r["image_size"] == [64, 64] and len(r["per_target"]["scene0"]["psnr"]) == 3
    assert np.isfinite(r["mean"]["psnr"]) and 0 < r["mean"]["psnr"] < 60  # random weights: finite, not perfect
    with pytest.raises(ValueError, match="re10k-2view has the baselines oracle, blank"):
        run_nvs_eval(NVSEvalConfig(protocol="re10k-2view", data=str(root), method="unproject", progress=False))
    with pytest.raises(ValueError, match="evaluation index not found"):
        run_nvs_eval(NVSEvalConfig(protocol="re10k-2view", data=str(root), index=str(tmp_path / "no.json"),
                                   method="oracle", progress=False))
