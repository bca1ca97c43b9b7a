"""SLAM3R trainer: I2P or L2W on dataset mixtures, RGB or RGB-D input (the Slam3DR depth fusion).

One step (the reference recipe, ``../shared/specs/slam3r.md``; losses in :mod:`.slam3r_losses`):

- **I2P**: a window of ``num_views`` views; the sample's reference view (``ref_id`` of the dataset
  config) goes first; the network predicts every view's points in the reference camera; loss
  ``Jointnorm_ConfLoss(Jointnorm_Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)`` (:func:`i2p_loss`).
- **L2W**: the first ``l2w_scene_frames`` views are scene frames with their ground-truth world points
  (world = the first scene frame's camera, normalised by the scene frames' mean distance), the others are
  keyframes with their local points (own camera, each normalised by its mean distance, as the
  reconstruction pipeline feeds them); tokens come from a frozen I2P encoder (``encoder_weights``);
  the loss compares the registered points with the ground truth at the scene frames' scale (:func:`l2w_loss`).
- RGB-D: ``depth_channels`` > 0 stacks the views' depth (and validity) onto the RGB input of the I2P
  encoder (:mod:`forward3d.models.slam3r.depth_input`); an RGB ``init_weights`` checkpoint gets
  zero-initialised depth channels, so training starts from the RGB model's exact output.

Optimisation, DDP, EMA, logging and checkpoints are :class:`forward3d.train.loop.TrainLoop`'s.
Written by rank 0 into ``out``: ``model.safetensors`` + ``config.json`` (checkpoint-last, loadable by
``Image2Points.from_pretrained(out)`` / ``Local2World.from_pretrained(out)``; EMA weights when EMA is on),
``best/`` (the lowest test loss, with ``test_dataset``), ``resume.pth`` and ``log.jsonl``.
Every random draw is a function of the seed and the step, so ``resume=True`` after a crash (even
``kill -9``) continues bit-identically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch import Tensor, nn

from forward3d.config import option
from forward3d.data.views import ViewBatch
from forward3d.hub import WeightsError
from forward3d.models.slam3r import Image2Points, Local2World, SLAM3RNetConfig
from forward3d.models.slam3r.depth_input import stack_depth, with_depth_channels
from forward3d.train.distributed import DistInfo, cleanup_distributed, init_distributed
from forward3d.train.ema import EMA
from forward3d.train.loop import LoopSettings, TrainLoop, grouped
from forward3d.train.slam3r_losses import ALPHA, ConfLossResult, avg_dis_scale, i2p_loss, l2w_loss, to_frame

logger = logging.getLogger(__name__)

__all__ = ["SLAM3RTrainerConfig", "SLAM3RTrainer", "SLAM3RTrainResult", "train_slam3r", "prepare_batch",
           "I2P_REFERENCE_MIX"]

# The reference's I2P training mixture, in our dataset names (roots via ROOT=/root=).
I2P_REFERENCE_MIX = ("4000 @ ScanNetpp(split='train', num_views=11, sample_freq=3, aug_crop=256, resolution=224, "
                     "transform=ColorJitter, seed=233) + 2000 @ ScanNet(split='train', num_views=11, sample_freq=3, "
                     "resolution=224, transform=ColorJitter, seed=233)")


@dataclass
class SLAM3RTrainerConfig:
    """A SLAM3R training run (defaults: the reference's full-size models and optimiser; the batch size is
    global over all processes).

    Attributes:
        model: which network to train: i2p (image to points) or l2w (local to world).
        train_dataset: training mixture, e.g. "1000 @ Synthetic(num_views=11, resolution=224)"
            (forward3d data list shows the datasets and their keys).
        test_dataset: held-out mixture for the test loss and checkpoint-best ('' = none).
        out: output folder (checkpoints, log.jsonl).
        steps: optimiser steps.
        batch_size: global batch size (windows) over all processes, per micro-batch.
        accum_steps: gradient accumulation: micro-batches per optimiser step.
        init_weights: initial weights: a SLAM3R checkpoint (folder, .safetensors, .pth) of the same
            architecture (an RGB one gets zero-initialised depth channels).
        init_from_dust3r: init_weights is a DUSt3R checkpoint (decoder keys renamed, missing keys initialised).
        encoder_weights: L2W only: the I2P checkpoint whose (frozen) encoder gives the tokens (default: a
            random frozen encoder of the same size, for tests).
        depth_channels: RGB-D input: 0 (RGB), 1 (+ depth in metres), 2 (+ depth and validity).
        resolution: square input size (multiple of patch_size).
        patch_size: ViT patch size.
        enc_embed_dim: encoder width.
        enc_depth: encoder blocks.
        enc_num_heads: encoder attention heads.
        dec_embed_dim: decoder width.
        dec_depth: decoder blocks per stack.
        dec_num_heads: decoder attention heads.
        l2w_scene_frames: L2W: the first N views of a window are scene frames (the rest are registered).
        alpha: weight of the -alpha log(conf) term.
        lr: peak learning rate (AdamW).
        min_lr: final learning rate of the cosine schedule.
        warmup_steps: linear learning-rate warm-up steps.
        lr_schedule: cosine (the reference) or constant after the warm-up.
        weight_decay: AdamW weight decay.
        grad_clip: gradient-norm clipping (0 = off).
        precision: fp32, or bf16 autocast (the losses stay fp32).
        ema: keep an EMA of the weights (checkpoint-last/best hold it).
        ema_decay: EMA decay.
        ema_every: EMA update every N steps.
        ema_start: first EMA step.
        num_workers: data-loader worker processes.
        seed: random seed (model init and sample order; the datasets have their own seeds).
        device: auto (CUDA when available), cpu or cuda.
        save_every: checkpoint every N steps.
        eval_every: test loss every N steps (with test_dataset).
        eval_batches: test batches per evaluation (0 = the whole test set).
        log_every: log line every N steps.
        resume: continue from OUT/resume.pth.
        progress: progress bar.
    """

    model: Literal["i2p", "l2w"] = "i2p"
    train_dataset: str = option("", metavar="MIX")
    test_dataset: str = option("", metavar="MIX")
    out: str = option("runs/slam3r", metavar="DIR")
    steps: int = 100_000
    batch_size: int = 4
    accum_steps: int = 1
    init_weights: str | None = option(None, flag="--weights", metavar="WEIGHTS")
    init_from_dust3r: bool = False
    encoder_weights: str | None = option(None, metavar="WEIGHTS")
    depth_channels: Literal[0, 1, 2] = 0
    resolution: int = SLAM3RNetConfig.img_size[0]
    # the architecture's defaults are the published model's: one source, SLAM3RNetConfig
    patch_size: int = SLAM3RNetConfig.patch_size
    enc_embed_dim: int = SLAM3RNetConfig.enc_embed_dim
    enc_depth: int = SLAM3RNetConfig.enc_depth
    enc_num_heads: int = SLAM3RNetConfig.enc_num_heads
    dec_embed_dim: int = SLAM3RNetConfig.dec_embed_dim
    dec_depth: int = SLAM3RNetConfig.dec_depth
    dec_num_heads: int = SLAM3RNetConfig.dec_num_heads
    l2w_scene_frames: int = 5
    alpha: float = ALPHA
    lr: float = 5e-5
    min_lr: float = 5e-7
    warmup_steps: int = 1000
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.05
    grad_clip: float = 0.0
    precision: Literal["fp32", "bf16"] = option("fp32", const_aliases={"--bf16": "bf16"})
    ema: bool = False
    ema_decay: float = 0.999
    ema_every: int = 1
    ema_start: int = 100
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    save_every: int = 1000
    eval_every: int = 1000
    eval_batches: int = 0
    log_every: int = 50
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in ("i2p", "l2w"):
            raise ValueError(f"SLAM3RTrainerConfig.model: expected 'i2p' or 'l2w', found {self.model!r}")
        if self.steps < 1 or self.batch_size < 1 or self.accum_steps < 1:
            raise ValueError(f"SLAM3RTrainerConfig: expected steps, batch_size, accum_steps >= 1, found "
                             f"{self.steps}, {self.batch_size}, {self.accum_steps}")
        if self.model == "l2w" and self.l2w_scene_frames < 1:
            raise ValueError(f"SLAM3RTrainerConfig.l2w_scene_frames: expected >= 1, found {self.l2w_scene_frames}")
        self.net_config()  # validates the architecture

    def net_config(self) -> SLAM3RNetConfig:
        return SLAM3RNetConfig(img_size=(self.resolution, self.resolution), patch_size=self.patch_size,
                               enc_embed_dim=self.enc_embed_dim, enc_depth=self.enc_depth,
                               enc_num_heads=self.enc_num_heads, dec_embed_dim=self.dec_embed_dim,
                               dec_depth=self.dec_depth, dec_num_heads=self.dec_num_heads,
                               need_encoder=self.model == "i2p",
                               depth_channels=self.depth_channels if self.model == "i2p" else 0,
                               corr_depth=min(2, self.dec_depth))

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(out=Path(self.out), steps=self.steps, lr=self.lr, min_lr=self.min_lr,
                            warmup_steps=self.warmup_steps, lr_schedule=self.lr_schedule,
                            accum_steps=self.accum_steps, grad_clip=self.grad_clip, precision=self.precision,
                            save_every=self.save_every, log_every=self.log_every,
                            eval_every=self.eval_every if self.test_dataset else 0, progress=self.progress,
                            name=f"slam3r-{self.model}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SLAM3RTrainResult:
    """``losses``: training loss of each step of this call; ``evals``: (step, test loss);
    ``checkpoint``: the checkpoint-last folder; ``best``: the best test loss."""

    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0
    best: float | None = None
    checkpoint: Path | None = None


def prepare_batch(batch: ViewBatch, depth_channels: int) -> tuple[Tensor, ViewBatch]:
    """Reorder each sample's views so that its reference view comes first, and build the network input.

    Returns ``x`` [B, V, 3 + depth_channels, H, W] (RGB in [-1, 1] + depth planes) and the reordered batch."""
    B, V = batch.image.shape[:2]
    order = torch.stack([torch.cat([r.view(1), torch.tensor([v for v in range(V) if v != int(r)])])
                         for r in batch.ref_id.cpu()])  # [B, V]
    idx = order.to(batch.image.device)

    def take(t: Tensor) -> Tensor:
        ix = idx.view(B, V, *([1] * (t.dim() - 2))).expand(B, V, *t.shape[2:])
        return torch.gather(t, 1, ix)

    b = replace(batch, image=take(batch.image), depth=take(batch.depth), valid=take(batch.valid), K=take(batch.K),
                c2w=take(batch.c2w), pts3d_cam=take(batch.pts3d_cam), pts3d_world=take(batch.pts3d_world),
                ref_id=torch.zeros_like(batch.ref_id))
    x = stack_depth(b.normalized(), b.depth, depth_channels, b.valid) if depth_channels else b.normalized()
    return x, b


class _I2PForward(nn.Module):
    def __init__(self, model: Image2Points):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_images(x, ref_index=0)


class _L2WForward(nn.Module):
    def __init__(self, model: Local2World):
        super().__init__()
        self.model = model

    def forward(self, ref_tokens: Tensor, ref_pts: Tensor, src_tokens: Tensor, src_pts: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(ref_tokens, ref_pts, src_tokens, src_pts)
        return torch.cat([out.ref_pts, out.src_pts], 1), torch.cat([out.ref_conf, out.src_conf], 1)


class SLAM3RTrainer:
    """Build with a config; :meth:`train` runs (or resumes) and returns a :class:`SLAM3RTrainResult`."""

    def __init__(self, config: SLAM3RTrainerConfig):
        from forward3d.data.mix import build_mixture

        cfg = self.cfg = config
        if not cfg.train_dataset:
            raise ValueError("SLAM3RTrainerConfig.train_dataset: expected a mixture such as "
                             "\"1000 @ Synthetic(num_views=11, resolution=224)\", found ''")
        self.dist: DistInfo = init_distributed(cfg.device)
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {self.dist.world_size} processes")
        self.per_rank = cfg.batch_size // self.dist.world_size
        defaults = {"resolution": cfg.resolution}
        self.train_set = build_mixture(cfg.train_dataset, defaults=defaults)
        self.test_set = build_mixture(cfg.test_dataset, defaults=defaults) if cfg.test_dataset else None
        torch.manual_seed(cfg.seed)
        self.model = self._build_model()
        self.encoder: Image2Points | None = None
        if cfg.model == "l2w":
            self.encoder = self._build_encoder()
        self.model.to(self.dist.device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimiser = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_every, cfg.ema_start) if cfg.ema else None
        fwd: nn.Module = _I2PForward(self.model) if cfg.model == "i2p" else _L2WForward(self.model)
        self.ddp: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            fwd = self.ddp = DistributedDataParallel(
                fwd, device_ids=[self.dist.device] if self.dist.device.type == "cuda" else None)
        self.forward_module = fwd
        self.out = Path(cfg.out)
        self.loop = TrainLoop(cfg.loop_settings(), self.model, self.optimiser, self.dist, self.ema, self.ddp,
                              cfg.to_dict())

    # ---------------------------------------------------------------------------------- models
    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        cls = Image2Points if cfg.model == "i2p" else Local2World
        net = cfg.net_config()
        if cfg.init_weights:
            rgb = replace(net, depth_channels=0)
            try:
                model = cls.from_pretrained(cfg.init_weights, config=net if not cfg.init_from_dust3r else rgb,
                                            init_from_dust3r=cfg.init_from_dust3r)
            except WeightsError:
                if not net.depth_channels or cfg.init_from_dust3r:
                    raise
                model = cls.from_pretrained(cfg.init_weights, config=rgb)  # an RGB checkpoint: add the channels
            if model.config.depth_channels != net.depth_channels:
                model = with_depth_channels(model, net.depth_channels)
                logger.info("%s: RGB weights, %d zero-initialised depth channel(s) added", cfg.init_weights,
                            net.depth_channels)
        else:
            model = cls(net)
            model.init_weights()
        # parts this forward never uses stay frozen (DDP wants every trainable parameter used)
        if cfg.model == "i2p":
            for m in (model.corr_score_norm, model.corr_score_proj):
                m.requires_grad_(False)
        else:
            model.patch_embed.requires_grad_(False)
            model.void_pe_token.requires_grad_(False)
        return model

    def _build_encoder(self) -> Image2Points:
        cfg = self.cfg
        net = replace(cfg.net_config(), need_encoder=True, depth_channels=cfg.depth_channels)
        src = cfg.encoder_weights
        if src:
            enc = Image2Points.from_pretrained(src, config=net)
        else:
            logger.warning("L2W training without --encoder-weights: the tokens come from a RANDOM frozen I2P encoder")
            g = torch.random.get_rng_state()
            torch.manual_seed(cfg.seed + 1)
            enc = Image2Points(net)
            enc.init_weights()
            torch.random.set_rng_state(g)
        enc.requires_grad_(False)
        return enc.to(self.dist.device).eval()

    # ---------------------------------------------------------------------------------- loss
    def compute_loss(self, batch: ViewBatch, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """Loss of one micro-batch and its parts (``regr``: mean normalised point error, ``conf_loss``)."""
        cfg = self.cfg
        x, b = prepare_batch(batch.to(self.dist.device), cfg.depth_channels)
        res = self._i2p_loss(x, b) if cfg.model == "i2p" else self._l2w_loss(x, b)
        return res.loss, res.parts()

    def _i2p_loss(self, x: Tensor, b: ViewBatch) -> ConfLossResult:
        with self.loop.autocast():
            pts, conf = self.forward_module(x)
        return i2p_loss(pts.float(), conf.float(), b.pts3d_world, b.valid, b.c2w[:, 0], self.cfg.alpha)

    def l2w_inputs(self, x: Tensor, b: ViewBatch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """L2W inputs of a reordered batch: (scene tokens [B, R, T, C], scene world points at the scene
        scale [B, R, H, W, 3], keyframe tokens [B, S, T, C], keyframe local points (each normalised)
        [B, S, H, W, 3], the scene scale [B]); the world frame is view 0's camera."""
        B, V = x.shape[:2]
        R = self.cfg.l2w_scene_frames
        if not 1 <= R < V:
            raise ValueError(f"l2w_scene_frames {R}: the windows have {V} views (need at least one keyframe)")
        assert self.encoder is not None
        with torch.no_grad(), self.loop.autocast():
            tokens = self.encoder.encode(x.flatten(0, 1)).unflatten(0, (B, V)).float()
        valid = b.valid
        gt_world = to_frame(torch.linalg.inv(b.c2w[:, 0].double()).float(), b.pts3d_world)
        scale = avg_dis_scale(gt_world[:, :R], valid[:, :R])
        ref_in = torch.where(valid[:, :R, ..., None], gt_world[:, :R] / scale.view(-1, 1, 1, 1, 1), 0.0)
        local = b.pts3d_cam[:, R:]
        ls = avg_dis_scale(local.flatten(0, 1)[:, None], valid[:, R:].flatten(0, 1)[:, None]).view(B, V - R)
        src_in = torch.where(valid[:, R:, ..., None], local / ls.view(B, V - R, 1, 1, 1), 0.0)
        return tokens[:, :R], ref_in, tokens[:, R:], src_in, scale

    def _l2w_loss(self, x: Tensor, b: ViewBatch) -> ConfLossResult:
        rt, ref_in, st, src_in, scale = self.l2w_inputs(x, b)
        with self.loop.autocast():
            pts, conf = self.forward_module(rt, ref_in, st, src_in)
        return l2w_loss(pts.float(), conf.float(), b.pts3d_world, b.valid, b.c2w[:, 0], scale, self.cfg.alpha)

    # ---------------------------------------------------------------------------------- data
    def _batches(self) -> Iterator[ViewBatch]:
        """Micro-batches from global micro-batch ``step * accum_steps`` on: each epoch a DistributedSampler
        order (seeded) and ``set_epoch`` on the mixture, so the data of a step never depends on the past."""
        from torch.utils.data import DataLoader, DistributedSampler

        from forward3d.data.views import collate_views

        cfg = self.cfg
        n = len(self.train_set)
        sampler = DistributedSampler(range(n), num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        per_epoch = len(sampler) // self.per_rank
        if per_epoch < 1:
            raise ValueError(f"train_dataset has {n} samples: too few for {self.per_rank} per process on "
                             f"{self.dist.world_size} process(es)")
        g = self.loop.step * cfg.accum_steps
        total = cfg.steps * cfg.accum_steps
        while g < total:
            epoch, pos = divmod(g, per_epoch)
            sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            order = list(sampler)
            batches = [order[j * self.per_rank:(j + 1) * self.per_rank] for j in range(pos, per_epoch)]
            batches = batches[:total - g]
            loader = DataLoader(self.train_set, batch_sampler=batches, collate_fn=collate_views,
                                num_workers=cfg.num_workers)
            for batch in loader:
                yield batch
                g += 1

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean test loss over ``eval_batches`` batches of the test mixture (this rank's share, averaged over ranks)."""
        from torch.utils.data import DataLoader

        from forward3d.data.views import collate_views

        assert self.test_set is not None
        n = len(self.test_set)
        idx = list(range(self.dist.rank, n, self.dist.world_size))
        batches = [idx[i:i + self.per_rank] for i in range(0, len(idx), self.per_rank)]
        if self.cfg.eval_batches:
            batches = batches[:self.cfg.eval_batches]
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            for batch in DataLoader(self.test_set, batch_sampler=batches, collate_fn=collate_views,
                                    num_workers=self.cfg.num_workers):
                loss, _ = self.compute_loss(batch)
                total += float(loss) * len(batch)
                count += len(batch)
        finally:
            self.model.train(was)
        if self.dist.enabled:
            import torch.distributed as dist

            t = torch.tensor([total, float(count)], dtype=torch.float64, device=self.dist.device)
            dist.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        return total / max(count, 1)

    # ---------------------------------------------------------------------------------- checkpoints
    def _weights(self) -> dict[str, Tensor]:
        sd = self.ema.state_dict() if self.ema is not None else self.model.state_dict()
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}

    def save_model(self, folder: Path | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (the HF layout ``from_pretrained`` reads) atomically."""
        from safetensors.torch import save_file

        from forward3d.io.atomic import atomic_path

        folder = Path(folder) if folder is not None else self.out
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(self._weights(), str(tmp), metadata={"step": str(self.loop.step), "model": self.cfg.model})
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(self.model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        return folder

    def _on_save(self) -> None:
        if self.dist.is_main:
            self.save_model()
            logger.info("step %d: saved %s and %s", self.loop.step, self.out / "model.safetensors",
                        self.loop.resume_path)

    def _on_best(self, value: float) -> None:
        self.save_model(self.out / "best")
        logger.info("step %d: new best test loss %.5f -> %s", self.loop.step, value, self.out / "best")

    # ---------------------------------------------------------------------------------- run
    def train(self) -> SLAM3RTrainResult:
        """Run until ``config.steps`` (from ``resume.pth`` when ``config.resume``)."""
        if self.cfg.resume:
            self.loop.load_resume()
        evaluate = self.evaluate if self.test_set is not None else None
        r = self.loop.run(grouped(self._batches(), self.cfg.accum_steps), self.compute_loss, on_save=self._on_save,
                          evaluate=evaluate, on_best=self._on_best)
        return SLAM3RTrainResult(losses=r.losses, evals=r.evals, step=r.step, best=r.best,
                                 checkpoint=self.out if self.dist.is_main else None)


def train_slam3r(config: SLAM3RTrainerConfig) -> SLAM3RTrainResult:
    """Train (DDP when launched by torchrun) and tear the process group down."""
    try:
        return SLAM3RTrainer(config).train()
    finally:
        cleanup_distributed()
