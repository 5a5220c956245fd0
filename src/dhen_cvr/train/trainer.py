"""Training: one loop for one CPU, one GPU or many processes (DESIGN section 5).

:func:`train` is the whole story, top to bottom:

1. join the ``torchrun`` job if there is one (:mod:`dhen_cvr.train.distributed`);
2. pick the start: a fresh model, ``init_from`` a checkpoint (warm start: weights and
   dense statistics, a new optimiser), or ``resume`` (everything, continuing mid-epoch);
3. fit the min-max statistics on the training days (fresh runs only);
4. loop (:meth:`Trainer.fit`): read a batch -> forward under autocast ->
   ``sum_h w_h BCE_h + sum_S alpha_S L(S)`` (paper eq. 2) -> backward -> clip -> AdamW
   step with warm-up + decay; log to ``metrics.jsonl``, TensorBoard and the progress
   bar; checkpoint every ``checkpoint_every_steps`` and at the end of each epoch;
5. evaluate the final model on ``eval_days`` (``RUN/eval.json``).

Distributed, in one place (:meth:`Trainer.step`): ``train.batch_size`` is global and each
rank reads ``batch_size / K`` rows of its own shard per step. Each rank scales its mean
losses by its share of the global batch (rows, and per head the label weight), so DDP's
gradient *average* is the gradient of the global batch's mean even when ranks hold
different numbers of rows; BatchNorm statistics are global too. A rank whose shard is
exhausted keeps stepping with a placeholder batch of weight 0 until every rank is done,
so uneven shards neither hang nor drop rows.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dhen_cvr.config import ExperimentConfig, load_experiment_config
from dhen_cvr.data.batch import Batch
from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec, load_spec
from dhen_cvr.data.stats import MinMaxStats, fit_minmax_stats
from dhen_cvr.days import day_name, resolve_days, select_days
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.eval.evaluate import EvalReport, evaluate_model
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.train.checkpoint import (
    Checkpoint,
    TrainProgress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dhen_cvr.train.config import TrainConfig
from dhen_cvr.train.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    set_contributes,
    sync_batchnorm,
)
from dhen_cvr.train.losses import (
    MaskedItemLoss,
    MultiTaskBCELoss,
    NextActionLoss,
    build_ssl_loss,
    keep_bce,
)
from dhen_cvr.train.recalibrate import recalibrate_heads

__all__ = [
    "TrainResult",
    "Trainer",
    "TrainingObjective",
    "build_optimizer",
    "learning_rate",
    "train",
]

RUN_FILE = "run.json"
TRACE_ENV = "DHEN_CVR_TRACE_ROWS"  # debug: a file to record every trained row in (_RowTrace)


@dataclass(frozen=True)
class TrainResult:
    """What a finished :func:`train` call produced."""

    run: Path
    checkpoint: Path
    progress: TrainProgress
    examples_per_s: float
    train_loss: float
    eval: EvalReport | None = None


def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine/linear decay to
    ``min_lr_ratio * lr`` at ``total_steps`` (constant after)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "none":
        return cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    done = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.decay == "cosine":
        return floor + 0.5 * (1.0 + math.cos(math.pi * done)) * (cfg.lr - floor)
    return cfg.lr - done * (cfg.lr - floor)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms or per-feature scales)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "ssl": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["ssl"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingObjective(nn.Module):
    """The model and its losses as one module, ``Σ_h w_h BCE_h + Σ_S α_S L(S)`` (paper
    eq. 2), so that DDP sees every parameter use (SSL targets are embedded by the model
    outside its own forward).

    ``head_share`` (``H``) and ``row_share`` scale this rank's per-head and SSL means by
    its share of the global batch (1 in a single process). Returns the objective to
    differentiate and the unscaled loss terms for logging."""

    def __init__(
        self,
        model: CVRModel,
        supervised: MultiTaskBCELoss,
        ssl: NextActionLoss | MaskedItemLoss | None,
    ) -> None:
        super().__init__()
        self.model, self.supervised, self.ssl = model, supervised, ssl

    def forward(
        self, batch: Batch, generator: torch.Generator, head_share: Tensor, row_share: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        parts = (batch.dense, batch.pretrained, batch.categorical, batch.sequences)
        if isinstance(self.ssl, MaskedItemLoss):
            # MLM: the heads train on a clean pass (as they are evaluated and served), the
            # masked-item loss on a second, masked pass.
            out = self.model.encode(*parts, ssl=False)
            masked = self.model.encode(*parts, self.ssl.sample_mask(batch, generator))
            ssl_encodings = masked.sequences
        else:
            # per-position SSL outputs only when they are used
            out = self.model.encode(*parts, ssl=self.ssl is not None)
            ssl_encodings = out.sequences
        supervised, per_head = self.supervised(
            out.logits, batch.labels, batch.label_mask, batch.weight
        )
        head_losses = torch.stack(list(per_head.values()))
        objective = (self.supervised.head_weight * head_losses * head_share).sum()
        terms = {f"loss/{h}": v for h, v in per_head.items()} | {"loss/supervised": supervised}
        loss = supervised
        keep_target = self.model.keep_target(batch.labels, batch.label_mask)
        if out.keep_logit is not None and keep_target is not None:
            keep = keep_bce(out.keep_logit, keep_target, batch.weight)
            objective = objective + keep * row_share
            loss = loss + keep
            terms["loss/keep"] = keep
        if self.ssl is not None:
            ssl_total, per_seq = self.ssl(ssl_encodings, self.model, generator)
            objective = objective + ssl_total * row_share
            loss = loss + ssl_total
            terms |= {f"ssl/{name}": v for name, v in per_seq.items()} | {"loss/ssl": ssl_total}
        terms["loss"] = loss
        return objective, terms


class Trainer:
    """Model, optimiser, losses and the loop for one run folder.

    Only rank 0 writes files (checkpoints, ``metrics.jsonl``, TensorBoard)."""

    def __init__(
        self,
        config: ExperimentConfig,
        spec: FeatureSpec,
        dense_stats: MinMaxStats,
        run: Path,
        ctx: DistContext,
    ) -> None:
        self.config, self.spec, self.run, self.ctx = config, spec, run, ctx
        self.dense_stats = dense_stats
        tc = config.train
        if tc.batch_size % ctx.world_size:
            raise DhenCvrError(
                f"train.batch_size {tc.batch_size} is not divisible by the "
                f"{ctx.world_size} processes"
            )
        _seed_everything(tc.seed)  # same initial weights on every rank
        self.model = CVRModel(spec, config.model, dense_stats).to(ctx.device)
        if ctx.is_distributed:
            sync_batchnorm(self.model)  # BatchNorm statistics over the global batch
        try:
            config.loss.ssl.check_names([s.name for s in spec.sequences])
            supervised = MultiTaskBCELoss.from_config(config.loss, self.model.head_names)
        except ValueError as err:
            raise DhenCvrError(f"loss config: {err}") from None
        self.objective = TrainingObjective(
            self.model, supervised, build_ssl_loss(config.loss.ssl)
        ).to(ctx.device)
        self.ddp: nn.Module = self.objective
        if ctx.is_distributed:
            self.ddp = DistributedDataParallel(
                self.objective,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=True,  # e.g. sequences whose SSL weight is 0
            )
        self.optimizer = build_optimizer(self.model, tc)
        # SSL negatives / MLM masks differ per rank but are reproducible from the seed.
        self.generator = torch.Generator(ctx.device).manual_seed(tc.seed * 7919 + ctx.rank + 1)
        self.progress = TrainProgress()
        self._pending_rng: dict[str, Any] | None = None
        self._sources: list[Path] = []
        self._placeholder_batch: Batch | None = None
        self._autocast = torch.autocast(
            ctx.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"
        )

    # ---- state ---------------------------------------------------------------------
    def load_weights(self, checkpoint: Checkpoint) -> None:
        """Warm start: the checkpoint's weights (the optimiser starts fresh)."""
        try:
            self.model.load_state_dict(checkpoint.model_state)
        except RuntimeError as err:
            raise DhenCvrError(
                f"checkpoint {checkpoint.path} does not fit this model/spec: {err}"
            ) from None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Resume: weights, optimiser, progress and this rank's RNG states."""
        self.load_weights(checkpoint)
        self.optimizer.load_state_dict(checkpoint.state["optimizer"])
        self.progress = checkpoint.progress
        rng = checkpoint.state["rng"]  # applied by _epoch_iterator; per rank, same world size
        self._pending_rng = rng[self.ctx.rank] if len(rng) == self.ctx.world_size else None

    def save(self) -> Path | None:
        """Checkpoint (collective: every rank calls it; rank 0 writes)."""
        rng = all_gather_objects(self.ctx, _rng_state(self.generator))
        path: Path | None = None
        if self.ctx.is_main:
            path = save_checkpoint(
                self.run,
                state={
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "rng": rng,
                },
                progress=self.progress,
                dense_stats=self.dense_stats.to_dict(),
                spec=self.spec,
                config=self.config.to_dict(),
                keep=self.config.train.keep_checkpoints,
            )
        return broadcast_object(self.ctx, path)

    # ---- one optimisation step -----------------------------------------------------
    def step(self, batch: Batch | None, lr: float) -> dict[str, float]:
        """One optimiser step; ``batch`` is this rank's part of the global batch, or None
        when this rank's shard is exhausted (it then contributes zero gradient).

        Returns the step's losses as means over the *global* batch, and its size."""
        present = batch is not None
        if batch is None:
            batch = self._placeholder()
        else:
            batch = batch.to(self.ctx.device, non_blocking=True)
        # Global normalisers: rows, and per head the label weight its BCE mean divides
        # by; each rank scales its means by its share of them (see the module docstring).
        label_weight = (batch.label_mask * batch.weight[:, None]).sum(0).float().cpu()
        local = torch.cat([label_weight, torch.tensor([float(len(batch))])]) * float(present)
        total = all_reduce_sum(self.ctx, local.clone())
        share = self.ctx.world_size * local / total.clamp_min(1e-12)
        head_share, row_share = share[:-1].to(self.ctx.device), float(share[-1])

        set_contributes(self.model, present)  # a placeholder adds no BatchNorm statistics
        self.ddp.train()
        with self._autocast:
            objective, terms = self.ddp(batch, self.generator, head_share, row_share)
        objective.backward()
        tc = self.config.train
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        names = list(terms)  # logged: row-weighted means over ranks
        sums = torch.stack([terms[k].detach().float().cpu() * local[-1] for k in names])
        means = all_reduce_sum(self.ctx, sums) / total[-1]
        return dict(zip(names, means.tolist(), strict=True)) | {"examples": float(total[-1])}

    def _placeholder(self) -> Batch:
        """A few rows of the training data for a rank with nothing left to read."""
        if self._placeholder_batch is None:
            assert self._sources, "fit() sets the sources"
            stream = ParquetBatchStream(
                self._sources, self.spec, batch_size=2, shuffle=False, rank=0, world_size=1
            )
            self._placeholder_batch = next(iter(stream)).to(self.ctx.device)
        return self._placeholder_batch

    # ---- the loop ------------------------------------------------------------------
    def fit(self, sources: list[Path], *, show_progress: bool = True) -> TrainResult:
        """Train for ``train.epochs`` over ``sources``, continuing from ``self.progress``."""
        tc, ctx = self.config.train, self.ctx
        self._sources = sources
        trace = _RowTrace.from_env(ctx)
        stream = ParquetBatchStream(
            sources,
            self.spec,
            batch_size=tc.batch_size // ctx.world_size,
            shuffle=tc.shuffle,
            shuffle_buffer=tc.shuffle_buffer,
            seed=tc.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            extra_columns=_RowTrace.columns(self.spec) if trace else (),
        )
        loader = make_loader(
            stream, num_workers=tc.num_workers, pin_memory=ctx.device.type == "cuda"
        )
        total_steps = sum(_steps_in_epoch(stream, e, tc.num_workers) for e in range(tc.epochs))
        log = _MetricLog(self.run, ctx, tensorboard=tc.tensorboard, every=tc.log_every)
        bar = tqdm(
            total=total_steps,
            initial=self.progress.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (show_progress and ctx.is_main),
        )
        started, start_examples = time.perf_counter(), self.progress.examples_seen
        last_loss = math.nan
        checkpoint = latest_checkpoint(self.run)
        try:
            for epoch in range(self.progress.epoch, tc.epochs):
                skip = self.progress.batches_in_epoch if epoch == self.progress.epoch else 0
                self.progress = replace(self.progress, epoch=epoch, batches_in_epoch=skip)
                stream.set_epoch(epoch, skip_batches=skip)
                batches = self._epoch_iterator(loader, mid_epoch=skip > 0)
                while True:
                    batch = next(batches, None)
                    if all_reduce_sum(ctx, torch.tensor([float(batch is not None)])).item() == 0:
                        break  # every rank has read its whole shard
                    lr = learning_rate(self.progress.step, total_steps, tc)
                    if trace is not None and batch is not None:
                        trace.write(epoch, self.progress.step, batch)
                    losses = self.step(batch, lr)
                    self.progress = replace(
                        self.progress,
                        step=self.progress.step + 1,
                        batches_in_epoch=self.progress.batches_in_epoch + 1,
                        examples_seen=self.progress.examples_seen + int(losses["examples"]),
                    )
                    last_loss = losses["loss"]
                    bar.update(1)
                    if record := log.add(self.progress, losses, lr=lr, epoch=epoch):
                        bar.set_postfix(
                            loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_s']:.0f}"
                        )
                    if (
                        tc.checkpoint_every_steps
                        and self.progress.step % tc.checkpoint_every_steps == 0
                    ):
                        checkpoint = self.save()
                self.progress = replace(self.progress, epoch=epoch + 1, batches_in_epoch=0)
                checkpoint = self.save()
        finally:
            bar.close()
            log.close()
        if checkpoint is None:  # nothing left to train and nothing saved yet
            checkpoint = self.save()
        assert checkpoint is not None
        elapsed = time.perf_counter() - started
        return TrainResult(
            run=self.run,
            checkpoint=checkpoint,
            progress=self.progress,
            examples_per_s=(self.progress.examples_seen - start_examples) / max(elapsed, 1e-9),
            train_loss=last_loss,
        )

    def _epoch_iterator(self, loader: Iterable[Batch], *, mid_epoch: bool) -> Iterator[Batch]:
        """``iter(loader)``, with a resumed run's RNG states applied where the uninterrupted
        run had them: creating a DataLoader iterator draws from the global generator, so
        a checkpoint taken at an epoch's end is restored *before* the next epoch's
        iterator exists and one taken mid-epoch *after* it."""
        rng, self._pending_rng = self._pending_rng, None
        if rng is not None and not mid_epoch:
            _set_rng_state(rng, self.generator)
        batches = iter(loader)
        if rng is not None and mid_epoch:
            _set_rng_state(rng, self.generator)
        return batches


def _steps_in_epoch(stream: ParquetBatchStream, epoch: int, num_workers: int) -> int:
    """Optimiser steps of an epoch: the largest number of batches any rank reads (from
    Parquet metadata; ranks whose shard ends earlier contribute nothing after that)."""
    stream.set_epoch(epoch)
    return max(stream.num_batches(num_workers, rank=r) for r in range(stream.world_size))


class _MetricLog:
    """Averages the step losses over ``every`` steps and writes them, with examples/s,
    to ``RUN/metrics.jsonl`` (one JSON object per line) and TensorBoard ``RUN/tb``.
    Rank 0 writes; every rank keeps the window so ``add`` returns the same record."""

    def __init__(self, run: Path, ctx: DistContext, *, tensorboard: bool, every: int) -> None:
        self.path = run / "metrics.jsonl" if ctx.is_main else None
        self.every = every
        self.writer: Any = None
        if ctx.is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tb"))
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(
        self, progress: TrainProgress, losses: dict[str, float], *, lr: float, epoch: int
    ) -> dict[str, float] | None:
        """Add one step's losses; every ``every`` steps write and return the window's
        record (mean losses, examples/s, and the lr and epoch of its last step)."""
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        if self.steps < self.every:
            return None
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        record = {k: v / self.steps for k, v in self.sums.items() if k != "examples"}
        record |= {"examples_per_s": self.sums["examples"] / elapsed, "lr": lr, "epoch": epoch}
        self._reset()
        if self.path is not None:
            line = {"step": progress.step, "examples_seen": progress.examples_seen, **record}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                self.writer.add_scalar(f"train/{key}", value, progress.step)
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _RowTrace:
    """Debug aid for the resume test: when ``DHEN_CVR_TRACE_ROWS`` names a file, every
    rank appends ``{"rank", "epoch", "step", "rows": [[user_id, request_time], ...]}``
    for each batch it trains on."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path, self.rank = path, rank

    @classmethod
    def from_env(cls, ctx: DistContext) -> _RowTrace | None:
        value = os.environ.get(TRACE_ENV)
        return cls(Path(value), ctx.rank) if value else None

    @staticmethod
    def columns(spec: FeatureSpec) -> list[str]:
        return [c for c in (spec.user_id, spec.request_time) if c is not None]

    def write(self, epoch: int, step: int, batch: Batch) -> None:
        ids = torch.stack([v.long() for v in batch.extras.values()], dim=1)
        line = {"rank": self.rank, "epoch": epoch, "step": step, "rows": ids.tolist()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


# ---- the public entry point ------------------------------------------------------------


def _check_new_run_folder(run: Path) -> None:
    if run.exists() and any(run.iterdir()):
        raise DhenCvrError(
            f"run folder {run} exists and is not empty; pass --resume to continue it "
            "or choose another --out"
        )


def _write_run_folder(
    run: Path,
    config: ExperimentConfig,
    data: Path,
    train_days: list[Path],
    init_from: Path | None,
) -> None:
    """``RUN/config.yaml`` and ``RUN/run.json`` (data, days, warm start): what ``--resume``
    needs to continue the run."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    info = {
        "data": str(data.resolve()),
        "train_days": [day_name(d) for d in train_days],
        "init_from": None if init_from is None else str(init_from.resolve()),
    }
    (run / RUN_FILE).write_text(json.dumps(info, indent=2))


def train(
    config: ExperimentConfig | str | Path | None,
    data: str | Path | None,
    train_days: str | list[Path] | None,
    out: str | Path,
    *,
    eval_days: str | list[Path] | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    allow_in_sample_eval: bool = False,
) -> TrainResult:
    """Train a model on ``train_days`` of ``data`` into run folder ``out``.

    ``config``: an :class:`ExperimentConfig`, a config path or a preset name.
    ``train_days``/``eval_days``: a selection such as ``"1-10"`` (:func:`select_days`)
    or a list of day folders. ``init_from``: a run or checkpoint folder to warm-start from
    (its weights and dense statistics; a fresh optimiser). ``resume``: continue the run in
    ``out`` from its newest checkpoint; ``config``, ``data`` and ``train_days`` are then
    read from the run folder (if given they must match). A ``resume`` of a run folder
    that does not exist yet starts it, so a scheduler can always pass ``resume=True``.
    ``eval_days`` that overlap the training days are refused (an in-sample AUC is not a
    next-day AUC) unless ``allow_in_sample_eval``; the report then says so in its notes.
    """
    run = Path(out)
    start = _resume_state(run, config, data, train_days) if resume else None
    if start is None:
        if config is None or data is None or train_days is None:
            raise DhenCvrError("train needs a config, a data folder and training days")
        config = config if isinstance(config, ExperimentConfig) else load_experiment_config(config)
        data_path = Path(data)
        start = _Start(config, data_path, resolve_days(data_path, train_days), None, True)
        if init_from is not None:
            start = replace(start, checkpoint=load_checkpoint(init_from))
    config, data_path, days = start.config, start.data, start.days
    eval_dirs = None if eval_days is None else resolve_days(data_path, eval_days)
    overlap = check_eval_days(days, eval_dirs or [], allow_in_sample_eval)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    ctx = init_distributed(config.train.device)
    spec = load_spec(data_path / "spec.yaml")
    if start.checkpoint is not None:
        _check_compatible(start.checkpoint, config, spec)
    if start.new_run:
        _check_new_run_folder(run)  # on every rank, so a refusal stops them all
        barrier(ctx)  # ... before rank 0 creates it
        if ctx.is_main:
            warm_from = None if start.checkpoint is None else start.checkpoint.path
            _write_run_folder(run, config, data_path, days, warm_from)
    if start.checkpoint is not None:
        stats = MinMaxStats.from_dict(start.checkpoint.dense_stats)
    else:
        stats = fit_minmax_stats(days, spec)  # every rank: deterministic, dense columns only

    trainer = Trainer(config, spec, stats, run, ctx)
    if start.checkpoint is not None:
        if start.warm_start:
            trainer.load_weights(start.checkpoint)
        else:
            trainer.restore(start.checkpoint)
    result = trainer.fit(days, show_progress=show_progress)
    if config.train.recalibrate:
        recalibrate_heads(trainer.model, spec, days, ctx, config.train.eval_batch_size)
        checkpoint = trainer.save()  # the same step again, now with the offsets
        assert checkpoint is not None
        result = replace(result, checkpoint=checkpoint)
    if eval_dirs is not None:
        report = evaluate_model(
            trainer.model,
            spec,
            eval_dirs,
            ctx=ctx,
            batch_size=config.train.eval_batch_size,
            loss=config.loss,
            run=str(run),
        )
        if overlap:
            report.notes["in_sample"] = f"evaluation days {overlap} were also trained on"
        if ctx.is_main:
            report.save(run / "eval.json")
        result = replace(result, eval=report)
    return result


def check_eval_days(train_days: list[Path], eval_days: list[Path], allow: bool) -> list[str]:
    """The evaluation days that were also trained on; refused unless ``allow``."""
    trained = {p.resolve() for p in train_days}
    overlap = [day_name(p) for p in eval_days if p.resolve() in trained]
    if overlap and not allow:
        raise DhenCvrError(
            f"evaluation day(s) {overlap} are also training days: that measures in-sample, "
            "not next-day, performance; choose later --eval-days or pass "
            "--allow-in-sample-eval"
        )
    return overlap


@dataclass(frozen=True)
class _Start:
    """Where a run starts: its config, data, days, and a checkpoint to load (restored
    in full when resuming, weights only for a warm start), and whether the run is new."""

    config: ExperimentConfig
    data: Path
    days: list[Path]
    checkpoint: Checkpoint | None
    new_run: bool
    warm_start: bool = True


def _resume_state(
    run: Path,
    config: ExperimentConfig | str | Path | None,
    data: str | Path | None,
    train_days: str | list[Path] | None,
) -> _Start | None:
    """The stored config/data/days of ``run`` and the checkpoint to continue from
    (None: ``run`` was never started)."""
    info_path = run / RUN_FILE
    if not info_path.is_file():
        if run.exists() and any(run.iterdir()):
            raise DhenCvrError(f"cannot resume: {run} is not a run folder (no {RUN_FILE})")
        return None
    info = json.loads(info_path.read_text())
    stored = ExperimentConfig.from_dict(
        yaml.safe_load((run / "config.yaml").read_text()), str(run / "config.yaml")
    )
    if config is not None:
        given = config if isinstance(config, ExperimentConfig) else load_experiment_config(config)
        if given != stored:
            raise DhenCvrError(
                f"cannot resume {run} with a different config; omit --config to use its own"
            )
    data_path = Path(data) if data is not None else Path(info["data"])
    days = select_days(data_path, ",".join(info["train_days"]))
    if train_days is not None:
        given_days = [day_name(d) for d in resolve_days(data_path, train_days)]
        if given_days != info["train_days"]:
            raise DhenCvrError(
                f"cannot resume {run} on other training days than {info['train_days']}"
            )
    latest = latest_checkpoint(run)
    if latest is not None:
        return _Start(stored, data_path, days, load_checkpoint(latest), False, warm_start=False)
    # Killed before the first checkpoint: start again (from the warm start, if any).
    warm = load_checkpoint(info["init_from"]) if info.get("init_from") else None
    return _Start(stored, data_path, days, warm, False)


def _check_compatible(checkpoint: Checkpoint, config: ExperimentConfig, spec: FeatureSpec) -> None:
    if checkpoint.config.get("model") != config.to_dict()["model"]:
        raise DhenCvrError(
            f"checkpoint {checkpoint.path} was trained with a different model config; "
            "warm starts need the same model section"
        )
    if checkpoint.spec.embedding_tables() != spec.embedding_tables():
        raise DhenCvrError(
            f"checkpoint {checkpoint.path} was trained on a spec with different embedding "
            "tables than the data's spec.yaml"
        )
