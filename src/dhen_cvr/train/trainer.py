"""The training loop: one code path for one CPU, one GPU or many processes (DESIGN 5).

:meth:`Trainer.fit`: read a batch -> forward under autocast ->
``sum_h w_h BCE_h + sum_S alpha_S L(S)`` (paper eq. 2) -> backward -> clip -> AdamW step
with warm-up + decay; log to ``metrics.jsonl``, TensorBoard and the progress bar;
checkpoint every ``checkpoint_every_steps`` and at the end of each epoch. Where a run
starts (fresh, warm start, resume) is :mod:`dhen_cvr.train.run`.

Distributed, in one place (:meth:`Trainer.step`): ``train.batch_size`` is global and each
rank reads ``batch_size / K`` rows of its own shard per step. Each rank scales its mean
losses by its share of the global batch (rows, and per head the label weight), so DDP's
gradient *average* is the gradient of the global batch's mean even when ranks hold
different numbers of rows; BatchNorm statistics are global too. A rank whose shard is
exhausted keeps stepping with a placeholder batch of weight 0 until every rank is done,
so uneven shards neither hang nor drop rows.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dhen_cvr.config import ExperimentConfig
from dhen_cvr.data.batch import Batch
from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.runtime.checkpoint import (
    Checkpoint,
    TrainProgress,
    latest_checkpoint,
    save_checkpoint,
)
from dhen_cvr.runtime.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
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
from dhen_cvr.train.metric_log import MetricLog
from dhen_cvr.train.optim import build_optimizer, learning_rate

__all__ = ["BatchHook", "TrainResult", "Trainer", "TrainingObjective"]

BatchHook = Callable[[int, int, Batch], None]
"""``(epoch, step, batch)``, called before each optimiser step with this rank's batch
(e.g. to record which rows were trained on; see ``extra_columns`` of :meth:`Trainer.fit`)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished :func:`train` call produced."""

    run: Path
    checkpoint: Path
    progress: TrainProgress
    examples_per_s: float
    train_loss: float
    model: CVRModel = field(repr=False, compare=False)


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
    def fit(
        self,
        sources: list[Path],
        *,
        show_progress: bool = True,
        on_batch: BatchHook | None = None,
        extra_columns: Sequence[str] = (),
    ) -> TrainResult:
        """Train for ``train.epochs`` over ``sources``, continuing from ``self.progress``.

        ``on_batch`` sees every batch before its step; ``extra_columns`` are read into
        ``batch.extras`` for it (e.g. the user id and request time)."""
        tc, ctx = self.config.train, self.ctx
        self._sources = sources
        stream = ParquetBatchStream(
            sources,
            self.spec,
            batch_size=tc.batch_size // ctx.world_size,
            shuffle=tc.shuffle,
            shuffle_buffer=tc.shuffle_buffer,
            seed=tc.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            extra_columns=extra_columns,
        )
        loader = make_loader(
            stream, num_workers=tc.num_workers, pin_memory=ctx.device.type == "cuda"
        )
        total_steps = sum(_steps_in_epoch(stream, e, tc.num_workers) for e in range(tc.epochs))
        log = MetricLog(self.run, ctx, tensorboard=tc.tensorboard, every=tc.log_every)
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
                    if on_batch is not None and batch is not None:
                        on_batch(epoch, self.progress.step, batch)
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
            log.flush()  # the partial last window (a run shorter than log_every included)
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
            model=self.model,
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
