"""Flash3D training: data samples, losses, EMA, smoke training, checkpoints, exact resume, DDP."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forward3d.data.re10k import write_re10k_layout
from forward3d.data.re10k_dataset import RE10KTrainDataset, collate_samples, depth_scales, scale_w2c
from forward3d.data.synthetic import SyntheticScene
from forward3d.models.flash3d import Flash3D
from forward3d.train.ema import EMA
from forward3d.train.flash3d import Flash3DTrainer, Flash3DTrainerConfig
from forward3d.train.losses import offset_regulariser, photometric_loss, scale_regulariser

ROOT = Path(__file__).resolve().parents[1]
COLMAP_SCALE = 2.0  # dataset poses are in metres / 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k")
    scenes = {f"seq{i}": SyntheticScene(num_frames=12, width=96, height=64, seed=i) for i in range(2)}
    write_re10k_layout(root, scenes, split="train", colmap_scale=COLMAP_SCALE)
    return root


def _cfg(root, out, **kw):
    base = dict(data=str(root), out=str(out), steps=4, batch_size=1, num_layers=18, gaussians_per_pixel=1,
                height=32, width=64, pad_border=16, num_targets=1, lr=5e-4, ema_start=1, ema_every=1,
                ema_decay=0.9, save_every=1000, log_every=1000, progress=False, device="cpu")
    base.update(kw)
    return Flash3DTrainerConfig(**base)


# --- data ------------------------------------------------------------------------------------------


def test_train_sample_shapes_targets_and_poses(data_root):
    ds = RE10KTrainDataset(data_root, "train", height=64, width=96, pad=32, num_targets=3, max_offset=30)
    assert len(ds) == 24
    s = ds[(5, 123)]
    assert s.image.shape == (3, 128, 160) and s.views.shape == (4, 3, 64, 96)
    assert s.depth.shape == (1, 128, 160) and s.kinds == ["source", "target", "target", "target"]
    assert s.frame_ids[0] == s.frame_ids[1] == 5 and all(t != 5 and abs(t - 5) <= 30 for t in s.frame_ids[2:])
    torch.testing.assert_close(s.w2c_rel[0], torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.K_src[:2, 2] - s.K_tgt[:2, 2], torch.tensor([32.0, 32.0]))
    # the unpadded part of the padded source is the source view
    torch.testing.assert_close(s.image[:, 32:96, 32:128], s.views[0], atol=1e-6, rtol=0)
    again = ds[(5, 123)]
    assert again.frame_ids == s.frame_ids  # a function of the item seed
    b = collate_samples([s, ds[(7, 1)]])
    assert b.image.shape == (2, 3, 128, 160) and b.w2c_rel.shape == (2, 4, 4, 4) and len(b.sparse_z) == 2


def test_depth_scale_recovers_metric_poses(data_root):
    ds = RE10KTrainDataset(data_root, "train", height=64, width=96, pad=32, num_targets=1)
    b = collate_samples([ds[0], ds[13]])
    for mode in ("mean_log", "ransac"):
        s = depth_scales(b.depth, 32, b.sparse_xys, b.sparse_z, mode=mode)
        torch.testing.assert_close(s, torch.full((2,), COLMAP_SCALE), rtol=0.03, atol=0)
    w2c = scale_w2c(b.w2c_rel, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(w2c[1, :, :3, 3], 3.0 * b.w2c_rel[1, :, :3, 3])
    torch.testing.assert_close(w2c[..., :3, :3], b.w2c_rel[..., :3, :3])


# --- losses and EMA --------------------------------------------------------------------------------


def test_regularisers_and_photometric_loss():
    s = torch.tensor([0.5, 2.5, 3.0], requires_grad=True)
    r = scale_regulariser(s, 2.0)
    r.backward()
    assert r.item() == pytest.approx(5.5 / 3) and s.grad.tolist() == pytest.approx([0, 1 / 3, 1 / 3])
    o = torch.tensor([0.5, -2.0, 1.5, 0.0])
    assert offset_regulariser(o, 1.0).item() == pytest.approx((4.0 + 2.25) / 4)
    x = torch.rand(2, 3, 16, 16)
    loss, l1, ssim = photometric_loss(x, x)
    assert loss.item() == pytest.approx(0.0, abs=1e-5) and ssim.item() == pytest.approx(1.0, abs=1e-5)
    loss2, _, _ = photometric_loss(x, torch.rand(2, 3, 16, 16))
    assert loss2 > 0.3


def test_ema_schedule():
    m = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(m, decay=0.5, every=2, start=2, warmup=False)
    for step, w in enumerate([1.0, 2.0, 4.0, 8.0, 16.0], 1):
        m.weight.data.fill_(w)
        ema.update(m, step)
        if step == 2:
            assert ema.state["weight"].item() == 2.0  # copied up to start
        if step == 3:
            assert ema.state["weight"].item() == 2.0  # not an update step
    assert ema.state["weight"].item() == pytest.approx(0.5 * 2 + 0.5 * 8)  # step 4 only (5 is skipped)


# --- training ----------------------------------------------------------------------------------------


def test_missing_depth_is_a_clear_error(tmp_path):
    write_re10k_layout(tmp_path / "d", {"s": SyntheticScene(num_frames=3, width=48, height=32)}, "train",
                       write_depth=False)
    with pytest.raises(ValueError, match="--depth-model"):
        Flash3DTrainer(_cfg(tmp_path / "d", tmp_path / "o"))


def test_smoke_training_loss_falls_and_checkpoint_loads(data_root, tmp_path, caplog):
    """ResNet-18, 64x96 + 32 px padding, 2 Gaussian layers, source + 1 target, batch 1, 20 steps."""
    cfg = _cfg(data_root, tmp_path, steps=20, batch_size=1, height=64, width=96, pad_border=32,
               gaussians_per_pixel=2, num_targets=1, lr=1e-3, ema_start=6, ema_every=2, save_every=10)
    with caplog.at_level(logging.INFO, logger="forward3d.train.flash3d"):
        result = Flash3DTrainer(cfg).train()
    assert sum("LPIPS term" in r.message and "OFF" in r.message for r in caplog.records) == 1
    losses = np.array(result.losses)
    assert len(losses) == 20 and np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    print(f"smoke losses: first5 {first:.4f} last5 {last:.4f}")
    assert last < 0.9 * first, losses
    ck = torch.load(tmp_path / "model.pth", weights_only=True)
    assert ck["version"] == "1.0" and ck["step"] == 20 and "state" in ck["optimiser"]
    assert any(k.startswith("backproject_depth.") for k in ck["model"])
    res = torch.load(tmp_path / "resume.pth", weights_only=True)
    for k, v in res["ema"].items():  # 'model' holds the EMA weights
        torch.testing.assert_close(ck["model"][k], v)
    model = Flash3D.from_pretrained(tmp_path / "model.pth")
    assert model.config.num_layers == 18 and model.config.gaussians_per_pixel == 2
    model = Flash3D.from_pretrained(tmp_path)  # the folder: config.json gives the image size too
    assert (model.config.height, model.config.width, model.config.pad_border) == (64, 96, 32)


def test_resume_continues_identically(data_root, tmp_path):
    full = Flash3DTrainer(_cfg(data_root, tmp_path / "full", steps=4)).train()
    Flash3DTrainer(_cfg(data_root, tmp_path / "split", steps=2)).train()
    second = Flash3DTrainer(_cfg(data_root, tmp_path / "split", steps=4, resume=True)).train()
    assert second.losses == full.losses[2:]
    a = torch.load(tmp_path / "full" / "resume.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "resume.pth", weights_only=True)
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="resume"):
        Flash3DTrainer(_cfg(data_root, tmp_path / "none", resume=True)).train()


def test_cli_train_runs(data_root, tmp_path, capsys):
    from forward3d.cli import main

    rc = main(["train", "flash3d", "--data", str(data_root), "--steps", "2", "--batch-size", "1", "--num-layers",
               "18", "--gaussians-per-pixel", "1", "--height", "32", "--width", "64", "--pad", "16",
               "--num-targets", "1", "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    assert rc == 0 and "step 2" in capsys.readouterr().out
    assert (tmp_path / "model.pth").is_file() and (tmp_path / "resume.pth").is_file()


def test_ddp_two_processes_gloo(data_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "forward3d", "train", "flash3d", "--data", str(data_root), "--steps", "2", "--batch-size", "2",
           "--num-layers", "18", "--gaussians-per-pixel", "1", "--height", "32", "--width", "64", "--pad", "16",
           "--num-targets", "1", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("flash3d: step 2") == 1  # rank 0 only
    ck = torch.load(tmp_path / "model.pth", weights_only=True)
    assert ck["step"] == 2


def test_depth_model_bf16_frozen_encoder_and_lpips(tmp_path):
    """Depth from a (fake) frozen depth network on the padded source, bf16 autocast, frozen encoder,
    and the LPIPS term once past lpips_after_step (random LPIPS weights from a file)."""
    from forward3d.eval.lpips import LPIPS
    from forward3d.models.depth import DepthEstimator

    class ConstantDepth(DepthEstimator):
        name, metric = "constant", True

        def __init__(self):
            self.calls = 0

        def predict(self, image, K=None):
            self.calls += 1
            return torch.full((image.shape[0], *image.shape[-2:]), 2.5)

    write_re10k_layout(tmp_path / "d", {"s": SyntheticScene(num_frames=4, width=64, height=32)}, "train",
                       write_depth=False)
    torch.save(LPIPS().state_dict_flat(), tmp_path / "lpips.pth")
    depth = ConstantDepth()
    cfg = _cfg(tmp_path / "d", tmp_path / "o", steps=2, precision="bf16", freeze_encoder=True,
               lpips_weights=str(tmp_path / "lpips.pth"), lpips_after_step=1)
    trainer = Flash3DTrainer(cfg, depth_model=depth)
    enc0 = {k: v.clone() for k, v in trainer.model.core.encoder.state_dict().items()}
    parts = []
    orig = trainer.compute_loss

    def spy(batch, step):
        loss, p = orig(batch, step)
        parts.append(p)
        return loss, p

    trainer.compute_loss = spy
    result = trainer.train()
    assert depth.calls == 2 and len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert "lpips" not in parts[0] and "lpips" in parts[1]
    for k, v in trainer.model.core.encoder.state_dict().items():  # weights and BN statistics
        torch.testing.assert_close(v, enc0[k], rtol=0, atol=0)
