"""The training loop shared by the trainers (Flash3D, SLAM3R).

One optimiser step = ``accum_steps`` micro-batches (DDP gradients synchronised on the last one only),
each loss divided by ``accum_steps``; optional gradient-norm clipping; the learning rate of step ``s``
(1-based) from :func:`lr_at` (linear warm-up over ``warmup_steps``, then constant or cosine down to
``min_lr``); optional :class:`~forward3d.train.ema.EMA`; bf16 autocast through :meth:`TrainLoop.autocast`;
a log line every ``log_every`` steps and one JSON line per step in ``OUT/log.jsonl`` (rank 0);
``OUT/resume.pth`` (raw weights, EMA, optimiser, step, best value, config) written atomically every
``save_every`` steps and at the end, from which a resumed run continues exactly as an uninterrupted
one, provided the trainer's data draws are a function of the seed and the step (both trainers' are).
An ``evaluate`` callback run every ``eval_every`` steps gives the value that picks ``checkpoint-best``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from forward3d.train.distributed import DistInfo
from forward3d.train.ema import EMA

logger = logging.getLogger(__name__)

__all__ = ["LoopSettings", "LoopResult", "TrainLoop", "lr_at", "grouped"]


@dataclass
class LoopSettings:
    """What the loop needs from a trainer's config (see the trainers' ``Attributes``)."""

    out: Path
    steps: int
    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    accum_steps: int = 1
    grad_clip: float = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"
    save_every: int = 1000
    log_every: int = 50
    eval_every: int = 0
    progress: bool = True
    name: str = "train"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.steps < 1 or self.accum_steps < 1 or self.save_every < 1 or self.log_every < 1:
            raise ValueError(f"{self.name}: expected steps, accum_steps, save_every, log_every >= 1, found "
                             f"{self.steps}, {self.accum_steps}, {self.save_every}, {self.log_every}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{self.name}: lr_schedule must be 'constant' or 'cosine', found {self.lr_schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"{self.name}: precision must be 'fp32' or 'bf16', found {self.precision!r}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"{self.name}: expected lr > 0, min_lr >= 0, warmup_steps >= 0, found {self.lr}, "
                             f"{self.min_lr}, {self.warmup_steps}")


def lr_at(step: int, s: LoopSettings) -> float:
    """Learning rate of optimiser step ``step`` (1-based): ``lr * step / warmup_steps`` during the
    warm-up, then ``lr`` (constant) or the half cosine from ``lr`` to ``min_lr`` at ``steps``."""
    if s.warmup_steps and step <= s.warmup_steps:
        return s.lr * step / s.warmup_steps
    if s.lr_schedule == "constant":
        return s.lr
    span = max(s.steps - s.warmup_steps, 1)
    t = min(max(step - s.warmup_steps, 0) / span, 1.0)
    return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def grouped(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``n`` items (the last, shorter group dropped)."""
    group: list[Any] = []
    for it in items:
        group.append(it)
        if len(group) == n:
            yield group
            group = []


@dataclass
class LoopResult:
    """``losses``: total loss of every step run in this call (rank 0's micro-batches, averaged);
    ``step``: the last step; ``best``: the best ``evaluate`` value so far (lower is better)."""

    losses: list[float] = field(default_factory=list)
    step: int = 0
    best: float | None = None
    evals: list[tuple[int, float]] = field(default_factory=list)


class TrainLoop:
    """Optimisation state (model, optimiser, EMA, step, best) and the loop over micro-batches.

    Args:
        settings: :class:`LoopSettings`.
        model: the raw model (checkpointed); ``ddp``: its DDP wrapper (or None) for ``no_sync``.
        optimiser: any torch optimiser; its learning rate is set every step.
        dist: this process's :class:`DistInfo`.
        ema: optional EMA of the weights.
        config: the trainer's config as a dict, stored in ``resume.pth``.
    """

    def __init__(self, settings: LoopSettings, model: nn.Module, optimiser: torch.optim.Optimizer, dist: DistInfo,
                 ema: EMA | None = None, ddp: nn.Module | None = None, config: dict | None = None) -> None:
        self.s = settings
        self.model, self.optimiser, self.dist, self.ema, self.ddp = model, optimiser, dist, ema, ddp
        self.config = config or {}
        self.step = 0
        self.best: float | None = None

    # ------------------------------------------------------------------------------------ pieces
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.s.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def resume_path(self) -> Path:
        return self.s.out / "resume.pth"

    @property
    def log_path(self) -> Path:
        return self.s.out / "log.jsonl"

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"version": "1.0", "step": self.step, "model": self.model.state_dict(),
                              "optimiser": self.optimiser.state_dict(), "config": self.config}
        if self.ema is not None:
            st["ema"] = self.ema.state_dict()
        if self.best is not None:
            st["best"] = float(self.best)
        return st

    def save_resume(self) -> None:
        """Write ``resume.pth`` atomically (rank 0)."""
        if not self.dist.is_main:
            return
        from forward3d.io.atomic import atomic_path

        self.s.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.resume_path) as tmp:
            torch.save(self.state(), tmp)

    def load_resume(self) -> None:
        """Restore weights, EMA, optimiser, step and best value from ``resume.pth``."""
        from forward3d.hub import strict_load

        p = self.resume_path
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no resume checkpoint (run without --resume first)")
        state = torch.load(p, map_location=self.dist.device, weights_only=True)
        need = ("model", "optimiser", "step") + (("ema",) if self.ema is not None else ())
        for key in need:
            if key not in state:
                raise ValueError(f"{p}: expected a resume checkpoint with '{key}', found keys {sorted(state)}")
        strict_load(self.model, state["model"], source=str(p))
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.step = int(state["step"])
        self.best = float(state["best"]) if "best" in state else None
        self._truncate_log()
        logger.info("resumed from %s at step %d", p, self.step)

    def _truncate_log(self) -> None:
        """Drop the log records of steps after the resumed one (they are run again)."""
        if not self.dist.is_main or not self.log_path.is_file():
            return
        from forward3d.io.atomic import atomic_path

        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= self.step:
                    keep.append(line)
            except (ValueError, AttributeError):
                continue  # a line cut by the crash
        with atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def _set_lr(self, step: int) -> float:
        lr = lr_at(step, self.s)
        for g in self.optimiser.param_groups:
            g["lr"] = lr
        return lr

    def _log_json(self, rec: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.s.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------------------------ the loop
    def run(self, batches: Iterable[Sequence[Any]],
            loss_fn: Callable[[Any, int], tuple[Tensor, dict[str, float]]],
            on_save: Callable[[], None] | None = None,
            evaluate: Callable[[], float] | None = None,
            on_best: Callable[[float], None] | None = None) -> LoopResult:
        """Run from :attr:`step` to ``settings.steps``.

        Args:
            batches: one sequence of ``accum_steps`` micro-batches per remaining step.
            loss_fn: ``(micro_batch, step) -> (loss, parts)`` (forward through the DDP module).
            on_save: writes the trainer's own checkpoint files; called after ``resume.pth``.
            evaluate: every ``eval_every`` steps (and at the end): a value, lower is better.
            on_best: called with the value when it is a new best (write ``checkpoint-best``).
        """
        s = self.s
        result = LoopResult(step=self.step, best=self.best)
        if self.step >= s.steps:
            logger.info("%s: already at step %d >= %d steps", s.name, self.step, s.steps)
            return result
        bar = None
        if s.progress and self.dist.is_main:
            from forward3d.progress import progress_bar

            bar = progress_bar(s.steps, s.name, unit="step", initial=self.step)
        params = [p for p in self.model.parameters() if p.requires_grad]
        t0 = time.time()
        try:
            for micro in batches:
                if self.step >= s.steps:
                    break
                if len(micro) != s.accum_steps:
                    raise ValueError(f"{s.name}: expected {s.accum_steps} micro-batches per step, found {len(micro)}")
                step = self.step + 1
                lr = self._set_lr(step)
                self.optimiser.zero_grad(set_to_none=True)
                total, parts_sum = 0.0, {}
                for j, mb in enumerate(micro):
                    sync = self.ddp is None or j == len(micro) - 1
                    ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()  # type: ignore[union-attr]
                    with ctx:
                        loss, parts = loss_fn(mb, step)
                        if not torch.isfinite(loss):
                            raise ValueError(f"step {step}: loss is not finite ({float(loss)}); parts {parts}")
                        (loss / len(micro)).backward()
                    total += float(loss.detach()) / len(micro)
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + v / len(micro)
                grad_norm = None
                if s.grad_clip > 0:
                    grad_norm = float(nn.utils.clip_grad_norm_(params, s.grad_clip))
                self.optimiser.step()
                self.step = step
                if self.ema is not None:
                    self.ema.update(self.model, step)
                result.losses.append(total)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4f}")
                rec = {"step": step, "loss": total, "lr": lr, **parts_sum, "time": round(time.time() - t0, 3)}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                if self.dist.is_main and (step % s.log_every == 0 or step == s.steps):
                    logger.info("%s: step %d loss %.5f lr %.3g %s (%.2f s/step)", s.name, step, total, lr,
                                " ".join(f"{k} {v:.4g}" for k, v in parts_sum.items()),
                                (time.time() - t0) / max(len(result.losses), 1))
                if evaluate is not None and s.eval_every and (step % s.eval_every == 0 or step == s.steps):
                    val = float(evaluate())
                    rec["eval"] = val
                    result.evals.append((step, val))
                    if self.best is None or val < self.best:
                        self.best = val
                        if on_best is not None and self.dist.is_main:
                            on_best(val)
                self._log_json(rec)
                if step % s.save_every == 0 or step == s.steps:
                    self.save_resume()
                    if on_save is not None:
                        on_save()
        finally:
            if bar is not None:
                bar.close()
        result.step, result.best = self.step, self.best
        return result
