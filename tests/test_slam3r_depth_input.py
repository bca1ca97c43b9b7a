"""RGB-D input of SLAM3R: depth planes, weight surgery RGB <-> RGB-D (outputs identical), loading,
and the reconstruction pipeline feeding sensor depth to an RGB-D checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from forward3d.models.slam3r import Image2Points, Local2World, SLAM3REngine, SLAM3RNetConfig
from forward3d.models.slam3r.depth_input import (PATCH_KEY, add_depth_channels, depth_channels_of, depth_planes,
                                                 remove_depth_channels, stack_depth, with_depth_channels)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(shared_dir):
    return shared_dir / "fixtures" / "slam3r" / "small"


@pytest.fixture(scope="module")
def i2p(small):
    return Image2Points.from_pretrained(small / "i2p_weights.safetensors", config=small / "i2p_config.json")


def _inputs(B=1, V=3, H=64, W=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(B, V, 3, H, W, generator=g) * 2 - 1
    depth = torch.rand(B, V, H, W, generator=g) * 5
    depth[..., :8, :] = 0.0  # a band of missing depth
    return img, depth


def test_depth_planes_and_stack():
    d = torch.tensor([[0.0, 2.0], [float("nan"), 4.0]])
    p = depth_planes(d, 2)
    torch.testing.assert_close(p[0], torch.tensor([[0.0, 2.0], [0.0, 4.0]]))
    torch.testing.assert_close(p[1], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert depth_planes(None, 1, (2, 2)).abs().sum() == 0
    img = torch.zeros(2, 3, 2, 2)
    x = stack_depth(img, d.expand(2, 2, 2), 2, valid=torch.tensor([[True, True], [False, False]]).expand(2, 2, 2))
    assert x.shape == (2, 5, 2, 2) and x[0, 4].tolist() == [[1.0, 1.0], [0.0, 0.0]] and x[0, 3, 1, 1] == 0
    assert stack_depth(img, None, 0) is img
    with pytest.raises(ValueError, match="depth"):
        stack_depth(img, torch.zeros(2, 3, 3), 1)


@pytest.mark.parametrize("k", [1, 2])
def test_surgery_keeps_the_rgb_output(i2p, k):
    img, depth = _inputs()
    ref_pts, ref_conf = i2p.forward_images(img, ref_index=1)
    rgbd = with_depth_channels(i2p, k)
    assert rgbd.config.depth_channels == k and rgbd.patch_embed.proj.weight.shape[1] == 3 + k
    assert list(rgbd.state_dict()) == list(i2p.state_dict())  # the official key names and order
    x = stack_depth(img, depth, k)
    pts, conf = rgbd.forward_images(x, ref_index=1)
    assert torch.equal(pts, ref_pts) and torch.equal(conf, ref_conf)
    # the RGB-D model refuses RGB input with a hint, the RGB model refuses RGB-D input
    with pytest.raises(ValueError, match="RGB \\+ depth"):
        rgbd.forward_images(img)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        i2p.forward_images(x)
    # and back: bit-identical to the RGB checkpoint
    back = with_depth_channels(rgbd, 0)
    for name, t in i2p.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    # once the depth weights are trained, going back is logged
    with torch.no_grad():
        rgbd.patch_embed.proj.weight[:, 3:] = 0.01
    out = remove_depth_channels(rgbd.state_dict())
    assert out[PATCH_KEY].shape[1] == 3 and depth_channels_of(out) == 0


def test_state_dict_surgery_errors(i2p):
    sd = i2p.state_dict()
    sd4 = add_depth_channels(sd, 1)
    assert depth_channels_of(sd4) == 1 and (sd4[PATCH_KEY][:, 3] == 0).all()
    with pytest.raises(ValueError, match="already"):
        add_depth_channels(sd4, 1)
    with pytest.raises(ValueError, match="k = 1 or 2"):
        add_depth_channels(sd, 3)
    with pytest.raises(ValueError, match="depth_channels"):
        SLAM3RNetConfig(depth_channels=3)


def test_config_keys_stay_the_published_ones(shared_dir, small, tmp_path):
    cfg = SLAM3RNetConfig.from_json(shared_dir / "fixtures" / "slam3r" / "hf_config_i2p.json")
    assert cfg.depth_channels == 0 and "depth_channels" not in cfg.to_dict()
    assert SLAM3RNetConfig.from_dict(cfg.to_dict()) == cfg
    # the published full-size I2P keys, for 3 channels
    manifest = (shared_dir / "fixtures" / "slam3r" / "keys_full_i2p.txt").read_text()
    assert f"{PATCH_KEY}" in manifest
    with torch.device("meta"):
        full = Image2Points(cfg)
        full_d = Image2Points(SLAM3RNetConfig(depth_channels=1))
    assert list(full.state_dict()) == list(full_d.state_dict())
    assert tuple(full_d.state_dict()[PATCH_KEY].shape) == (1024, 4, 16, 16)
    # an RGB-D checkpoint saved HF-style loads back (config.json says depth_channels)
    rgbd = with_depth_channels(Image2Points.from_pretrained(small / "i2p_weights.safetensors",
                                                            config=small / "i2p_config.json"), 2)
    d = tmp_path / "rgbd"
    d.mkdir()
    save_file(rgbd.state_dict(), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(rgbd.config.to_dict()))
    assert json.loads((d / "config.json").read_text())["depth_channels"] == 2
    again = Image2Points.from_pretrained(d)
    assert again.config.depth_channels == 2
    assert torch.equal(again.patch_embed.proj.weight, rgbd.patch_embed.proj.weight)
    # the L2W model has the same patch embedding surgery (unused at inference: it reads I2P tokens)
    l2w = Local2World.from_pretrained(small / "l2w_weights.safetensors", config=small / "l2w_config.json")
    assert with_depth_channels(l2w, 1).patch_embed.proj.weight.shape[1] == 4
    assert load_file(str(small / "i2p_weights.safetensors"))[PATCH_KEY].shape[1] == 3


def test_pipeline_feeds_sensor_depth_to_an_rgbd_checkpoint(small):
    """``forward3d recon --backend slam3r`` on RGB-D input: the engine's encoder gets the depth planes
    when the I2P checkpoint has them, and the zero-initialised RGB-D model reconstructs exactly as the RGB one."""
    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.pipelines.slam3r import SLAM3RBackend, SLAM3RConfig

    i2p = Image2Points.from_pretrained(small / "i2p_weights.safetensors", config=small / "i2p_config.json")
    l2w = Local2World.from_pretrained(small / "l2w_weights.safetensors", config=small / "l2w_config.json")
    scene = SyntheticScene(SyntheticConfig(seed=3, num_frames=8, width=160, height=120, trajectory="orbit"))
    frames = list(scene.frames())
    assert all(f.depth is not None for f in frames)
    cfg = SLAM3RConfig(keyframe_stride=1, initial_winsize=3, win_r=1, num_scene_frame=2, seed=0)

    def run(engine):
        seen = []
        encode = engine.encode

        def spy(images, ids=None):
            seen.append(images.clone())
            return encode(images, ids)

        engine.encode = spy
        rec = SLAM3RBackend(cfg, models=engine).run(frames, progress=False)
        return rec, torch.cat(seen)

    rec_rgb, x_rgb = run(SLAM3REngine(i2p, l2w))
    engine = SLAM3REngine(with_depth_channels(i2p, 2), l2w)
    assert engine.depth_channels == 2
    rec_d, x_d = run(engine)
    assert x_rgb.shape[1] == 3 and x_d.shape[1] == 5
    torch.testing.assert_close(x_d[:, :3], x_rgb)
    d = x_d[:, 3]
    assert (d > 0).float().mean() > 0.9 and 0.2 < float(d[d > 0].median()) < 20  # metres from the sensor
    assert torch.equal(x_d[:, 4], (d > 0).float())
    np.testing.assert_array_equal(np.asarray(rec_d.point_maps), np.asarray(rec_rgb.point_maps))
