"""Flash3D trainer: RealEstate10K (Flash3D layout) -> a Flash3D checkpoint.

One step (see ``../shared/specs/flash3d.md``, "Rendering and training"):

1. a batch of sources (+ 3 targets within +-30 frames), resized and padded (:mod:`forward3d.data.re10k_dataset`);
2. metric depth of the padded source: the dataset's ``depth/`` folder, or a frozen depth network
   (``depth_model``, run without gradients); a per-image scale ``exp(mean(log d - log z_colmap))`` from
   the sparse COLMAP points brings the relative poses to metres;
3. Flash3D predicts Gaussians in the source camera frame; each view (source + targets) is rendered at
   the unpadded size with ``K_tgt`` and ``w2c = (w2c[tgt] @ c2w[src])`` with scaled translation, on a
   random background colour (equivalent to the reference's render-padded-then-crop);
4. loss ``1.0 L1 + 0.85 (1 - SSIM) [+ 0.01 LPIPS after lpips_after_step] + 0.001 scale-reg +
   0.01 offset-reg`` (:mod:`forward3d.train.losses`), Adam, EMA of the weights.

Checkpoints (rank 0): ``OUT/model.pth`` in the reference format (``{'model': EMA state_dict,
'version', 'optimiser', 'step'}``, loadable by :meth:`Flash3D.from_pretrained`) and ``OUT/resume.pth``
(raw weights, EMA, optimiser, step, config) from which ``resume=True`` continues exactly as an
uninterrupted run (the loop, EMA, schedules and checkpoint writes are :class:`forward3d.train.loop.TrainLoop`'s):
every random draw (sample order, targets, backgrounds) is a function of the seed
and the step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch import Tensor, nn

from forward3d.config import option
from forward3d.data.re10k_dataset import RE10KBatch, RE10KTrainDataset, collate_samples, depth_scales, scale_w2c
from forward3d.models.flash3d import Flash3D, Flash3DConfig, save_checkpoint
from forward3d.train.distributed import DistInfo, cleanup_distributed, init_distributed
from forward3d.train.ema import EMA
from forward3d.train.loop import LoopSettings, TrainLoop, grouped
from forward3d.render.batch import render_views  # noqa: F401  (re-exported: older imports)
from forward3d.train.losses import offset_regulariser, photometric_loss, scale_regulariser

logger = logging.getLogger(__name__)

__all__ = ["Flash3DTrainerConfig", "Flash3DTrainer", "TrainResult", "train_flash3d"]


@dataclass
class Flash3DTrainerConfig:
    """Everything a training run needs (defaults: the reference recipe; the batch size is global).

    Attributes:
        data: RealEstate10K root in the Flash3D layout.
        split: split name ({split}.pickle.gz).
        out: output folder (checkpoints, logs).
        steps: optimiser steps.
        batch_size: global batch size over all processes.
        num_layers: ResNet depth.
        gaussians_per_pixel: Gaussian layers L.
        height: network image height before padding.
        width: network image width before padding.
        pad_border: zero padding per side.
        init_weights: initial Flash3D checkpoint (.pth/.safetensors/folder).
        freeze_encoder: do not train the ResNet encoder.
        num_targets: target frames per source.
        max_frame_offset: targets within +-N frames.
        depth_model: frozen metric depth network (unidepth[:SRC] | transformers:PATH); default: the
            dataset's depth/ folder.
        num_workers: data-loader worker processes.
        l1_weight: weight of the L1 photometric term.
        ssim_weight: weight of the 1 - SSIM term.
        lpips_weight: weight of the LPIPS term.
        lpips_after_step: LPIPS term from this step.
        lpips_weights: LPIPS-VGG weights 'VGG16.pth,LIN.pth' or one combined file (LPIPS term off without them).
        scale_reg_weight, scale_reg_threshold: regulariser on Gaussian scales above the threshold.
        offset_reg_weight, offset_reg_threshold: regulariser on squared offsets above the threshold.
        znear, zfar: depth range of the renderer in metres.
        lr: Adam learning rate (peak, after the warm-up).
        min_lr: final learning rate of the cosine schedule.
        warmup_steps: linear learning-rate warm-up steps.
        lr_schedule: constant (the reference) or cosine after the warm-up.
        accum_steps: gradient accumulation: micro-batches of batch_size per optimiser step.
        ema_decay: EMA decay of the weights.
        ema_every: EMA update every N steps.
        ema_start: first EMA step.
        ema_warmup: EMA warm-up (decay ramps up).
        precision: network precision: fp32, or bf16 autocast (rendering stays fp32).
        grad_clip: gradient-norm clipping (0 = off; the reference does not clip).
        seed: random seed.
        device: auto (CUDA when available), cpu or cuda.
        save_every: checkpoint every N steps.
        log_every: log the loss every N steps.
        resume: continue from OUT/resume.pth.
        progress: progress bar.
    """

    data: str = option("", metavar="DIR")
    split: str = "train"
    out: str = option("runs/flash3d", metavar="DIR")
    steps: int = 100_000
    batch_size: int = 16  # global over all DDP processes
    # model
    num_layers: Literal[18, 34, 50] = 50
    gaussians_per_pixel: int = 2
    height: int = 256
    width: int = 384
    pad_border: int = option(32, flag="--pad")
    init_weights: str | None = option(None, flag="--weights", metavar="WEIGHTS")  # Flash3D checkpoint to start from
    freeze_encoder: bool = False
    # data
    num_targets: int = 3
    max_frame_offset: int = 30
    depth_model: str | None = option(None, metavar="SPEC")  # make_depth_estimator spec; else the dataset's depth/
    num_workers: int = 0
    # loss
    l1_weight: float = 1.0
    ssim_weight: float = 0.85
    lpips_weight: float = 0.01
    lpips_after_step: int = 50_000
    lpips_weights: str | None = option(None, metavar="FILES")  # "VGG16.pth,LIN.pth" or one combined file
    scale_reg_weight: float = 0.001
    scale_reg_threshold: float = 2.0
    offset_reg_weight: float = 0.01
    offset_reg_threshold: float = 1.0
    znear: float = 0.01
    zfar: float = 100.0
    # optimisation
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    accum_steps: int = 1
    ema_decay: float = 0.9999
    ema_every: int = 10
    ema_start: int = 100
    ema_warmup: bool = True
    precision: Literal["fp32", "bf16"] = option("fp32", const_aliases={"--bf16": "bf16"})
    grad_clip: float = 0.0  # 0 = off (the reference does not clip)
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    save_every: int = 5000
    log_every: int = 50
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"Flash3DTrainerConfig: expected steps >= 1 and batch_size >= 1, found "
                             f"{self.steps}, {self.batch_size}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"Flash3DTrainerConfig: precision must be 'fp32' or 'bf16', found {self.precision!r}")
        if (self.height + 2 * self.pad_border) % 32 or (self.width + 2 * self.pad_border) % 32:
            raise ValueError(f"Flash3DTrainerConfig: height/width + 2 * pad_border must be multiples of 32, found "
                             f"{self.height}x{self.width} with pad {self.pad_border}")

    def model_config(self) -> Flash3DConfig:
        return Flash3DConfig(num_layers=self.num_layers, gaussians_per_pixel=self.gaussians_per_pixel,
                             height=self.height, width=self.width, pad_border=self.pad_border)

    def to_dict(self) -> dict:
        return asdict(self)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(out=Path(self.out), steps=self.steps, lr=self.lr, min_lr=self.min_lr,
                            warmup_steps=self.warmup_steps, lr_schedule=self.lr_schedule,
                            accum_steps=self.accum_steps, grad_clip=self.grad_clip, precision=self.precision,
                            save_every=self.save_every, log_every=self.log_every, progress=self.progress,
                            name="flash3d")


@dataclass
class TrainResult:
    """``losses``: total loss of every step run in this call (rank 0's batch); ``step``: last step;
    ``checkpoint``/``resume_checkpoint``: written files."""

    losses: list[float] = field(default_factory=list)
    step: int = 0
    checkpoint: Path | None = None
    resume_checkpoint: Path | None = None


class _BatchSampler:
    """Per-rank batches of ``(index, item_seed)`` from a :class:`DistributedSampler` per epoch,
    starting at global step ``start_step`` (resume)."""

    def __init__(self, n: int, dist: DistInfo, per_rank_batch: int, seed: int, start_step: int, total_steps: int):
        from torch.utils.data import DistributedSampler

        self.sampler = DistributedSampler(range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_rank = per_rank_batch
        self.batches_per_epoch = len(self.sampler) // per_rank_batch
        if self.batches_per_epoch < 1:
            raise ValueError(f"the dataset has {n} samples: too few for a batch of {per_rank_batch} per process "
                             f"on {dist.world_size} process(es)")
        self.n, self.seed, self.start, self.total = n, seed, start_step, total_steps

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while step < self.total:
            epoch, pos = divmod(step, self.batches_per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for j in range(pos, self.batches_per_epoch):
                if step >= self.total:
                    return
                idx = order[j * self.per_rank:(j + 1) * self.per_rank]
                yield [(i, (self.seed * 1_000_003 + epoch) * self.n + i) for i in idx]
                step += 1


class Flash3DTrainer:
    """Build with a config; :meth:`train` runs (or resumes) and returns a :class:`TrainResult`.

    ``depth_model``: a ready :class:`~forward3d.models.depth.DepthEstimator` instead of
    ``config.depth_model`` (a spec string), e.g. for tests or custom depth sources.
    """

    def __init__(self, config: Flash3DTrainerConfig, depth_model=None):
        self.cfg = config
        if not config.data:
            raise ValueError("Flash3DTrainerConfig.data: expected a RealEstate10K root folder, found ''")
        self.dist = init_distributed(config.device)
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"batch size {config.batch_size} is not divisible by the {self.dist.world_size} processes")
        self.per_rank_batch = config.batch_size // self.dist.world_size
        self.out = Path(config.out)
        self.dataset = RE10KTrainDataset(config.data, config.split, config.height, config.width, config.pad_border,
                                         config.num_targets, config.max_frame_offset,
                                         use_dataset_depth=config.depth_model is None and depth_model is None)
        self.depth_model = depth_model
        if depth_model is not None:
            if not getattr(depth_model, "metric", True):
                raise ValueError("depth_model: Flash3D needs metric depth, this estimator predicts relative depth")
        elif config.depth_model:
            from forward3d.models.depth import make_depth_estimator

            self.depth_model = make_depth_estimator(config.depth_model, device=self.dist.device)
            if not getattr(self.depth_model, "metric", True):
                raise ValueError(f"--depth-model {config.depth_model}: Flash3D needs a metric depth network, this "
                                 f"one predicts relative depth")
            logger.info("depth: %s (frozen) on the padded source", getattr(self.depth_model, "name", config.depth_model))
        else:
            name, i = self.dataset.items[0]
            if not self.dataset.has_depth(name, i):
                raise ValueError(f"{config.data}: no depth for {name} frame {i} at "
                                 f"{self.dataset.index.depth_path(name, i)}; pass a metric depth network "
                                 f"(--depth-model SPEC) or add depth/{config.split}/<seq>/<timestamp>.png (mm)")
        torch.manual_seed(config.seed)
        if config.init_weights:
            self.model = Flash3D.from_pretrained(config.init_weights, config=config.model_config())
        else:
            self.model = Flash3D(config.model_config())
        self.model.to(self.dist.device).train()
        if config.freeze_encoder:  # weights and BatchNorm statistics stay as loaded
            self.model.core.encoder.requires_grad_(False)
            self.model.core.encoder.eval()
        fc = getattr(self.model.core.encoder.encoder, "fc", None)
        if fc is not None:  # the classifier head is in the checkpoint but unused (and DDP wants every param used)
            fc.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimiser = torch.optim.Adam(params, lr=config.lr)
        self.ema = EMA(self.model, config.ema_decay, config.ema_every, config.ema_start, config.ema_warmup)
        self.lpips = None
        if config.lpips_weight > 0:
            if config.lpips_weights:
                from forward3d.eval.lpips import load_lpips

                self.lpips = load_lpips(config.lpips_weights, device=self.dist.device)
            elif self.dist.is_main:
                logger.warning("LPIPS term (%.3g x LPIPS-VGG after step %d) is OFF: no LPIPS weights given "
                               "(--lpips-weights VGG16.pth,LIN.pth)", config.lpips_weight, config.lpips_after_step)
        self.ddp: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(_Forward(self.model),
                                               device_ids=[self.dist.device] if self.dist.device.type == "cuda" else None)
        self.loop = TrainLoop(config.loop_settings(), self.model, self.optimiser, self.dist, self.ema, self.ddp,
                              config.to_dict())

    @property
    def step(self) -> int:
        return self.loop.step

    # checkpoints --------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "model.pth"

    @property
    def resume_path(self) -> Path:
        return self.loop.resume_path

    def save(self) -> None:
        """Write ``model.pth`` (reference format, EMA weights) and ``resume.pth`` (rank 0 only)."""
        if not self.dist.is_main:
            return
        self.loop.save_resume()
        self._save_model()

    def _save_model(self) -> None:
        if not self.dist.is_main:
            return
        from forward3d.io.atomic import atomic_path

        save_checkpoint(self.checkpoint_path, self.model, self.optimiser.state_dict(), self.step,
                        self.ema.state_dict())
        with atomic_path(self.out / "config.json") as tmp:
            tmp.write_text(json.dumps(self.model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        logger.info("step %d: saved %s and %s", self.step, self.checkpoint_path, self.resume_path)

    def load_resume(self) -> None:
        """Restore raw weights, EMA, optimiser and step from ``resume.pth``."""
        self.loop.load_resume()

    # one step -----------------------------------------------------------------------------------
    def _depth(self, batch: RE10KBatch) -> Tensor:
        if self.depth_model is not None:
            with torch.no_grad():
                d = self.depth_model.predict(batch.image, batch.K_src)
            return d.clone().reshape(batch.image.shape[0], 1, *batch.image.shape[-2:]).float()
        if batch.depth is None:
            raise ValueError(f"sequence {batch.seq[0]}: no dataset depth and no depth model")
        return batch.depth

    def _autocast(self):
        return self.loop.autocast()

    def compute_loss(self, batch: RE10KBatch, step: int) -> tuple[Tensor, dict[str, float]]:
        """Total loss of one batch at (1-based) ``step`` and its parts."""
        cfg = self.cfg
        depth = self._depth(batch)
        scales = depth_scales(depth, cfg.pad_border, batch.sparse_xys, batch.sparse_z, mode="mean_log")
        w2c = scale_w2c(batch.w2c_rel, scales)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step * 104729 + self.dist.rank)
        background = torch.rand(len(batch), 3, generator=gen).to(self.dist.device)
        with self._autocast():
            fwd = self.ddp if self.ddp is not None else _Forward(self.model)
            out = fwd(batch.image, depth, batch.K_src)
        pred = render_views(out, w2c, batch.K_tgt, cfg.width, cfg.height, background, cfg.znear, cfg.zfar)
        pred = pred.flatten(0, 1)
        target = batch.views.flatten(0, 1).to(pred.dtype)
        loss, l1, s = photometric_loss(pred, target, cfg.l1_weight, cfg.ssim_weight)
        parts = {"l1": float(l1.detach()), "ssim": float(s.detach())}
        if self.lpips is not None and step > cfg.lpips_after_step:
            lp = self.lpips(pred * 2 - 1, target * 2 - 1).mean()
            loss = loss + cfg.lpips_weight * lp
            parts["lpips"] = float(lp.detach())
        if cfg.scale_reg_weight > 0:
            r = scale_regulariser(out.scaling.float(), cfg.scale_reg_threshold)
            loss = loss + cfg.scale_reg_weight * r
            parts["scale_reg"] = float(r.detach())
        if cfg.offset_reg_weight > 0:
            r = offset_regulariser(out.offset.float(), cfg.offset_reg_threshold)
            loss = loss + cfg.offset_reg_weight * r
            parts["offset_reg"] = float(r.detach())
        return loss, parts

    def _loader(self):
        from torch.utils.data import DataLoader

        n = self.cfg.accum_steps  # one micro-batch per sampler batch, n per optimiser step
        bs = _BatchSampler(len(self.dataset), self.dist, self.per_rank_batch, self.cfg.seed, self.step * n,
                           self.cfg.steps * n)
        return DataLoader(self.dataset, batch_sampler=bs, collate_fn=collate_samples, num_workers=self.cfg.num_workers,
                          persistent_workers=False)

    def train(self) -> TrainResult:
        """Run until ``config.steps`` (from ``resume.pth`` when ``config.resume``)."""
        cfg = self.cfg
        if cfg.resume:
            self.load_resume()
        device = self.dist.device
        batches = grouped((b.to(device) for b in self._loader()), cfg.accum_steps)
        loop = self.loop.run(batches, self.compute_loss, on_save=self._save_model)
        result = TrainResult(losses=loop.losses, step=loop.step)
        if self.dist.is_main:
            result.checkpoint, result.resume_checkpoint = self.checkpoint_path, self.resume_path
        return result


class _Forward(nn.Module):
    """``forward(image, depth, K_src) -> Flash3DOutput`` (the module DDP wraps)."""

    def __init__(self, model: Flash3D):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, depth: Tensor, K_src: Tensor):
        return self.model(image, depth, K_src)


def train_flash3d(config: Flash3DTrainerConfig) -> TrainResult:
    """Train (DDP when launched by torchrun) and tear the process group down."""
    try:
        return Flash3DTrainer(config).train()
    finally:
        cleanup_distributed()
