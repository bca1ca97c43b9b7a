"""SLAM3R training: tiny I2P/L2W runs on synthetic sequences, checkpoints, RGB -> RGB-D init, CLI,
2-process gloo DDP, and the kill -9 resume (bit-identical to an uninterrupted run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forward3d.models.slam3r import Image2Points, Local2World
from forward3d.train.loop import LoopSettings, lr_at
from forward3d.train.slam3r import SLAM3RTrainer, SLAM3RTrainerConfig, prepare_batch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(resolution=32, patch_size=8, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32,
            dec_depth=1, dec_num_heads=2)
SYN = "Synthetic(num_views=3, num_scenes=2, frames_per_scene=10, width=48, height=36, resolution=32{extra})"
MIX = "12 @ " + SYN.format(extra="")
TEST_MIX = "4 @ " + SYN.format(extra=", split='test'")
TINY_ARGS = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _cfg(out, **kw):
    base = dict(train_dataset=MIX, out=str(out), steps=4, batch_size=2, warmup_steps=1, lr=1e-3, save_every=1000,
                log_every=1000, progress=False, device="cpu", **TINY)
    base.update(kw)
    return SLAM3RTrainerConfig(**base)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), FORWARD3D_NO_PROGRESS="1")


def test_lr_schedule():
    s = LoopSettings(out=Path("."), steps=10, lr=1.0, min_lr=0.1, warmup_steps=2, lr_schedule="cosine")
    assert [lr_at(i, s) for i in (1, 2)] == [0.5, 1.0]
    assert lr_at(10, s) == pytest.approx(0.1) and lr_at(6, s) == pytest.approx(0.55)
    assert lr_at(7, LoopSettings(out=Path("."), steps=10, lr=2.0)) == 2.0
    with pytest.raises(ValueError, match="lr_schedule"):
        LoopSettings(out=Path("."), steps=1, lr=1.0, lr_schedule="step")


def test_i2p_rgbd_training_checkpoints_and_test_loss(tmp_path):
    cfg = _cfg(tmp_path, steps=6, depth_channels=2, test_dataset=TEST_MIX, eval_every=3, save_every=3)
    r = SLAM3RTrainer(cfg).train()
    assert len(r.losses) == 6 and r.losses[-1] < r.losses[0], r.losses
    assert [s for s, _ in r.evals] == [3, 6] and r.best == min(v for _, v in r.evals)
    m = Image2Points.from_pretrained(tmp_path)  # checkpoint-last, HF layout with config.json
    assert m.config.depth_channels == 2 and m.patch_embed.proj.weight.shape[1] == 5
    assert Image2Points.from_pretrained(tmp_path / "best").config.depth_channels == 2
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 7)) and {"loss", "lr", "regr", "conf_loss"} <= set(log[0])
    assert "eval" in log[2] and "eval" not in log[0]
    res = torch.load(tmp_path / "resume.pth", weights_only=True)
    assert res["step"] == 6 and res["best"] == pytest.approx(r.best)
    sd = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(sd[k], v) for k, v in res["model"].items())


def test_prepare_batch_puts_the_reference_first(tmp_path):
    t = SLAM3RTrainer(_cfg(tmp_path, train_dataset="4 @ " + SYN.format(extra=", ref_id=-2"), depth_channels=1))
    from forward3d.data.views import collate_views

    batch = collate_views([t.train_set[i] for i in range(4)])
    x, b = prepare_batch(batch, 1)
    assert x.shape == (4, 3, 4, 32, 32)
    for i in range(4):
        r = int(batch.ref_id[i])
        assert torch.equal(b.c2w[i, 0], batch.c2w[i, r]) and torch.equal(x[i, 0, 3], batch.depth[i, r])
    assert (b.ref_id == 0).all()


def test_l2w_training_and_init_from_an_rgb_checkpoint(tmp_path):
    r = SLAM3RTrainer(_cfg(tmp_path / "l2w", model="l2w", l2w_scene_frames=1, steps=3)).train()
    assert len(r.losses) == 3 and all(torch.isfinite(torch.tensor(r.losses)))
    assert Local2World.from_pretrained(tmp_path / "l2w").config.need_encoder is False
    # an RGB I2P checkpoint initialises an RGB-D run with zero depth weights: the same output at step 0
    rgb = SLAM3RTrainer(_cfg(tmp_path / "rgb", steps=1))
    rgb.train()
    t = SLAM3RTrainer(_cfg(tmp_path / "rgbd", depth_channels=2, init_weights=str(tmp_path / "rgb")))
    assert t.model.config.depth_channels == 2
    from forward3d.data.views import collate_views

    batch = collate_views([t.train_set[0]])
    x, _ = prepare_batch(batch, 2)
    ref = Image2Points.from_pretrained(tmp_path / "rgb")
    with torch.no_grad():
        a = t.model.eval().forward_images(x)
        b = ref.forward_images(x[:, :, :3])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_config_and_mixture():
    with pytest.raises(ValueError, match="train_dataset"):
        SLAM3RTrainer(_cfg("unused", train_dataset=""))
    with pytest.raises(ValueError, match="__import__"):
        SLAM3RTrainer(_cfg("unused", train_dataset="10 @ __import__('os')"))
    with pytest.raises(ValueError, match="depth_channels"):
        _cfg("unused", depth_channels=3)


def test_cli_train_slam3r(tmp_path, capsys):
    from forward3d.cli import main

    rc = main(["train", "slam3r", "--train-dataset", MIX, "--steps", "2", "--batch-size", "2", "--depth-channels",
               "1", "--out", str(tmp_path), "--no-progress", "--device", "cpu", *TINY_ARGS])
    assert rc == 0 and "slam3r: step 2" in capsys.readouterr().out
    assert Image2Points.from_pretrained(tmp_path).config.depth_channels == 1


def test_ddp_two_processes_gloo(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "forward3d", "train", "slam3r", "--train-dataset", MIX, "--steps", "2", "--batch-size", "2",
           "--out", str(tmp_path), "--no-progress", "--device", "cpu", *TINY_ARGS]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("slam3r: step 2") == 1  # rank 0 reports
    assert torch.load(tmp_path / "resume.pth", weights_only=True)["step"] == 2


def _train_cmd(out, steps, *extra):
    return [sys.executable, "-m", "forward3d", "train", "slam3r", "--train-dataset", MIX, "--steps", str(steps),
            "--batch-size", "2", "--warmup-steps", "3", "--lr", "1e-3", "--ema", "--ema-start", "2",
            "--save-every", "4", "--out", str(out), "--no-progress", "--device", "cpu", *TINY_ARGS, *extra]


def test_kill9_resume_is_bit_identical(tmp_path):
    """A real training process is killed with SIGKILL after its first checkpoint, resumed, and ends with
    exactly the weights (raw and EMA) and optimiser state of an uninterrupted run."""
    steps = 16
    from forward3d.cli import main

    # the uninterrupted run, in this process (one thread, as the subprocesses)
    assert main(_train_cmd(tmp_path / "full", steps)[3:]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(out, steps), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "resume.pth").is_file():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(out / "resume.pth", weights_only=True)["step"]
    assert 4 <= killed_at < steps, killed_at  # killed mid-run, after a checkpoint
    again = subprocess.run(_train_cmd(out, steps, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "resume.pth", weights_only=True)
    b = torch.load(out / "resume.pth", weights_only=True)
    assert a["step"] == b["step"] == steps
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for sa, sb in zip(a["optimiser"]["state"].values(), b["optimiser"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    la = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lb] == list(range(1, steps + 1))
    assert [x["loss"] for x in la] == [x["loss"] for x in lb]


def test_accumulation_bf16_clipping_and_ema(tmp_path):
    cfg = _cfg(tmp_path, steps=2, batch_size=1, accum_steps=2, precision="bf16", grad_clip=1.0, ema=True,
               ema_start=0, ema_decay=0.5)
    t = SLAM3RTrainer(cfg)
    r = t.train()
    assert len(r.losses) == 2 and all(torch.isfinite(torch.tensor(r.losses)))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("grad_norm" in x for x in log)
    sd = load_file(str(tmp_path / "model.safetensors"))  # checkpoint-last holds the EMA weights
    assert all(torch.equal(sd[k], v) for k, v in t.ema.state_dict().items())
    assert any(not torch.equal(sd[k], v) for k, v in t.model.state_dict().items())
