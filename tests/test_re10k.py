import gzip
import pickle

import numpy as np
import pytest

from forward3d.data.re10k import RE10KIndex, estimate_depth_scale, safe_pickle_load, write_re10k_layout
from forward3d.data.synthetic import SyntheticScene


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_safe_pickle_refuses_code(tmp_path):
    p = tmp_path / "x.pickle.gz"
    p.write_bytes(gzip.compress(pickle.dumps({"a": _Evil()})))
    with pytest.raises(ValueError, match="refusing"):
        safe_pickle_load(p)
    p.write_bytes(gzip.compress(pickle.dumps({"a": np.arange(3), "b": [1.5, "s"]})))
    out = safe_pickle_load(p)
    assert np.array_equal(out["a"], np.arange(3)) and out["b"] == [1.5, "s"]


def test_layout_roundtrip_and_depth_scale(tmp_path):
    scene = SyntheticScene(num_frames=6, width=96, height=64, seed=3)
    write_re10k_layout(tmp_path, {"seqA": scene}, split="test", colmap_scale=2.5)
    idx = RE10KIndex(tmp_path, "test")
    seq = idx.sequences["seqA"]
    assert len(seq) == 6
    assert np.allclose(seq.K(0, 96, 64), scene.K, atol=1e-9)
    img = idx.load_image("seqA", 2)
    assert img.shape == (64, 96, 3)
    xys, z = idx.sparse_points("seqA", 2, 96, 64)
    assert len(z) > 20
    depth = scene.frame(2).depth
    # metric depth / COLMAP-unit depth = colmap_scale, by both estimators
    assert estimate_depth_scale(depth, xys, z) == pytest.approx(2.5, rel=0.02)
    noisy = depth.copy()
    noisy[:, :30] *= 3.0  # a third of the image is wrong: RANSAC keeps the consistent points
    assert estimate_depth_scale(noisy, xys, z, mode="ransac") == pytest.approx(2.5, rel=0.02)
    # translations in COLMAP units times the scale are metric
    assert np.allclose(seq.c2w[:, :3, 3] * 2.5, scene.c2w[:, :3, 3], atol=1e-6)
