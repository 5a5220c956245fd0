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
so uneven shards neither hang nor drop rows. Every rank knows the epoch's step count from
the Parquet metadata, so this costs one collective per epoch (a final check), not one
per step.

The hot path (DESIGN 5): the loss terms of each step are added up on the device and
read back once per ``log_every`` steps (one collective, one host sync); the only
per-step collective is the global normaliser of a multi-process step (a few floats, on
the process group's device: CUDA under NCCL). AdamW is the fused kernel where the
device has one (:mod:`dhen_cvr.train.optim`); ``train.compile`` compiles the objective.
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
from torch.optim.swa_utils import AveragedModel
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
from dhen_cvr.runtime.cpu_memory import retain_freed_cpu_memory
from dhen_cvr.runtime.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    sync_batchnorm,
    sync_batchnorm_layers,
)
from dhen_cvr.train.losses import (
    MaskedItemLoss,
    MultiTaskBCELoss,
    NextActionLoss,
    build_ssl_loss,
    keep_bce,
)
from dhen_cvr.train.metric_log import MetricLog
from dhen_cvr.train.optim import build_optimizer, learning_rate, set_learning_rate
from dhen_cvr.train.weight_average import weight_average

__all__ = [
    "BatchHook",
    "TrainResult",
    "Trainer",
    "TrainingObjective",
    "needs_unused_parameters",
]

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
    train_loss: float  # mean loss of the steps after the last log record (or of that record)
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

    ``head_share`` (``H``) and ``row_share`` (a scalar tensor) scale this rank's per-head
    and SSL means by its share of the global batch (1 in a single process). Returns the
    objective to differentiate and the unscaled loss terms for logging as one ``K``
    vector, named by :attr:`term_names` (set by the first call)."""

    def __init__(
        self,
        model: CVRModel,
        supervised: MultiTaskBCELoss,
        ssl: NextActionLoss | MaskedItemLoss | None,
    ) -> None:
        super().__init__()
        self.model, self.supervised, self.ssl = model, supervised, ssl
        self.term_names: list[str] = []

    def forward(
        self, batch: Batch, generator: torch.Generator, head_share: Tensor, row_share: Tensor
    ) -> tuple[Tensor, Tensor]:
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
        supervised, head_losses = self.supervised.head_means(
            out.logits, batch.labels, batch.label_mask, batch.weight
        )
        objective = (self.supervised.head_weight * head_losses * head_share).sum()
        names = ["loss/supervised"]
        terms = [supervised]
        loss = supervised
        keep_target = self.model.keep_target(batch.labels, batch.label_mask)
        if out.keep_logit is not None and keep_target is not None:
            keep = keep_bce(out.keep_logit, keep_target, batch.weight)
            objective = objective + keep * row_share
            loss = loss + keep
            names.append("loss/keep")
            terms.append(keep)
        if self.ssl is not None:
            ssl_total, per_seq = self.ssl(ssl_encodings, self.model, generator)
            objective = objective + ssl_total * row_share
            loss = loss + ssl_total
            names += [f"ssl/{name}" for name in per_seq] + ["loss/ssl"]
            terms += [*per_seq.values(), ssl_total]
        names.append("loss")
        terms.append(loss)
        if not self.term_names:
            self.term_names = [f"loss/{h}" for h in self.supervised.head_names] + names
        logged = torch.cat([head_losses.detach().float(), torch.stack(terms).detach().float()])
        return objective, logged

    def named_terms(self, logged: Tensor) -> dict[str, Tensor]:
        """The logged ``K`` vector of :meth:`forward` by term name."""
        return dict(zip(self.term_names, logged.unbind(0), strict=True))


def needs_unused_parameters(config: ExperimentConfig, spec: FeatureSpec) -> bool:
    """Whether some parameters get no gradient in a training step, so DDP must look for
    them (``find_unused_parameters``, which costs a graph walk per step): a sequence
    without SSL weight leaves its SSL projections unused, and a non-causal encoder
    trained without MLM its mask embedding."""
    if not spec.sequences:
        return False
    ssl = config.loss.ssl
    if any(s.name not in ssl.active for s in spec.sequences):
        return True
    return not config.model.sequence.causal and ssl.objective != "mlm"


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
        if tc.retain_cpu_memory:
            retain_freed_cpu_memory()  # host memory: every step's activations on CPU
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
            find_unused = tc.find_unused_parameters
            if find_unused == "auto":
                find_unused = needs_unused_parameters(config, spec)
            self.ddp = DistributedDataParallel(
                self.objective,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=find_unused,
                gradient_as_bucket_view=True,
            )
        self._sync_bn = sync_batchnorm_layers(self.model)
        self._contributes = True
        if tc.compile:
            self.ddp.compile()  # in place: state dicts keep their keys
        self.optimizer = build_optimizer(self.model, tc)
        # train.ema_decay: a bias-corrected moving average of the weights (weight_average.py),
        # saved at the end instead of the last iterate (buffers: the model's own are kept).
        self.ema: AveragedModel | None = None
        if tc.ema_decay:
            self.ema = weight_average(self.model, tc.ema_decay)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        # SSL negatives / MLM masks differ per rank but are reproducible from the seed.
        self.generator = torch.Generator(ctx.device).manual_seed(tc.seed * 7919 + ctx.rank + 1)
        self.progress = TrainProgress()
        self._pending_rng: dict[str, Any] | None = None
        self._sources: list[Path] = []
        self._placeholder_batch: Batch | None = None
        self._autocast = torch.autocast(
            ctx.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"
        )
        # Device-side accumulators, read once per log window (see the module docstring).
        heads = len(self.model.head_names)
        self._full_share = torch.ones(heads, device=ctx.device), torch.ones((), device=ctx.device)
        self._window: Tensor | None = None  # K: sum over the window's steps of the terms
        self._window_steps = 0
        self._examples = torch.zeros(
            (), device=ctx.device, dtype=torch.float64
        )  # global rows, not yet counted
        self._local_examples = 0  # a single process counts its rows on the host

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
        if self.ema is not None and "weight_average" in checkpoint.state:
            self.ema.load_state_dict(checkpoint.state["weight_average"])
        self.progress = checkpoint.progress
        rng = checkpoint.state["rng"]  # applied by _epoch_iterator; per rank, same world size
        self._pending_rng = rng[self.ctx.rank] if len(rng) == self.ctx.world_size else None

    def save(self) -> Path | None:
        """Checkpoint (collective: every rank calls it; rank 0 writes)."""
        self._drain(window=False)  # progress.examples_seen up to date
        rng = all_gather_objects(self.ctx, _rng_state(self.generator))
        path: Path | None = None
        if self.ctx.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
            }
            if self.ema is not None:  # mid-run checkpoints: the average so far, for a resume
                state["weight_average"] = self.ema.state_dict()
            path = save_checkpoint(
                self.run,
                state=state,
                progress=self.progress,
                dense_stats=self.dense_stats.to_dict(),
                spec=self.spec,
                config=self.config.to_dict(),
                keep=self.config.train.keep_checkpoints,
            )
        return broadcast_object(self.ctx, path)

    # ---- one optimisation step -----------------------------------------------------
    def step(self, batch: Batch | None, lr: float) -> None:
        """One optimiser step; ``batch`` is this rank's part of the global batch, or None
        when this rank's shard is exhausted (it then contributes zero gradient).

        The step's losses (means over the *global* batch) and its size are added to
        device-side sums that :meth:`_drain` reads; nothing here waits for the device."""
        present = batch is not None
        if batch is None:
            batch = self._placeholder()
        else:
            batch = batch.to(self.ctx.device, non_blocking=True)
        if self.ctx.is_distributed:
            # Global normalisers: rows, and per head the label weight its BCE mean divides
            # by; each rank scales its means by its share of them (module docstring).
            label_weight = (batch.label_mask * batch.weight[:, None]).sum(0).float()
            rows = torch.full((1,), float(len(batch)), device=label_weight.device)
            local = torch.cat([label_weight, rows]) * float(present)
            total = all_reduce_sum(self.ctx, local.clone())
            share = self.ctx.world_size * local / total.clamp_min(1e-12)
            head_share, row_share = share[:-1], share[-1]
            term_weight = local[-1] / total[-1].clamp_min(1.0)  # this rank's share of rows
            self._examples += total[-1]
            if present != self._contributes:  # a placeholder adds no BatchNorm statistics
                self._contributes = present
                for layer in self._sync_bn:
                    layer.contributes = present
        else:
            head_share, row_share = self._full_share
            term_weight = None
            self._local_examples += len(batch)

        if not self.objective.training:
            self.ddp.train()
        try:
            with self._autocast:
                objective, terms = self.ddp(batch, self.generator, head_share, row_share)
        except RuntimeError as err:
            if "find_unused_parameters" not in str(err):
                raise
            raise DhenCvrError(
                "DDP: some parameters got no gradient in the previous step; set "
                "train.find_unused_parameters=true for this config"
            ) from None
        objective.backward()
        tc = self.config.train
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, tc.grad_clip, foreach=True)
        set_learning_rate(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

        # logged: row-weighted means over ranks, summed over the window's steps
        weighted = terms if term_weight is None else terms * term_weight
        self._window = weighted if self._window is None else self._window + weighted
        self._window_steps += 1

    def _drain(self, *, window: bool) -> dict[str, float]:
        """Count the examples trained since the last call into ``self.progress`` and, with
        ``window``, return the window's mean loss terms (and reset it): one collective
        and one host sync. Collective: every rank calls it at the same step."""
        parts = []
        if window and self._window is not None:
            parts.append(all_reduce_sum(self.ctx, self._window.clone()).double())
        if self.ctx.is_distributed:
            parts.append(self._examples.reshape(1))
        values = torch.cat(parts).tolist() if parts else []  # the one host sync
        if self.ctx.is_distributed:
            examples = round(values.pop())
            self._examples.zero_()
        else:
            examples = self._local_examples
        self._local_examples = 0
        self.progress = replace(self.progress, examples_seen=self.progress.examples_seen + examples)
        if not window or not values:
            return {}
        steps, self._window_steps, self._window = self._window_steps, 0, None
        names = self.objective.term_names
        return {k: v / steps for k, v in zip(names, values, strict=True)}

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
        steps_per_epoch = [_steps_in_epoch(stream, e, tc.num_workers) for e in range(tc.epochs)]
        total_steps = sum(steps_per_epoch)
        log = MetricLog(
            self.run, ctx, tensorboard=tc.tensorboard, examples_seen=self.progress.examples_seen
        )
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
        self.ddp.train()
        try:
            for epoch in range(self.progress.epoch, tc.epochs):
                skip = self.progress.batches_in_epoch if epoch == self.progress.epoch else 0
                self.progress = replace(self.progress, epoch=epoch, batches_in_epoch=skip)
                stream.set_epoch(epoch, skip_batches=skip)
                batches = self._epoch_iterator(loader, mid_epoch=skip > 0)
                for batch in self._global_steps(batches, steps_per_epoch[epoch] - skip):
                    lr = learning_rate(self.progress.step, total_steps, tc)
                    if on_batch is not None and batch is not None:
                        on_batch(epoch, self.progress.step, batch)
                    self.step(batch, lr)
                    self.progress = replace(
                        self.progress,
                        step=self.progress.step + 1,
                        batches_in_epoch=self.progress.batches_in_epoch + 1,
                    )
                    bar.update(1)
                    if self.progress.step % tc.log_every == 0:
                        means = self._drain(window=True)
                        record = log.write(self.progress, means, lr=lr, epoch=epoch)
                        last_loss = record["loss"]
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
            tail = self._drain(window=True)  # steps after the last record, if any
            if tail:  # the partial last window (a run shorter than log_every included)
                log.write(self.progress, tail, lr=lr, epoch=epoch)
                last_loss = tail.get("loss", last_loss)
        finally:
            bar.close()
            log.close()
        if self.ema is not None and self.ema.n_averaged:  # from here on, the model is the average
            with torch.no_grad():
                for param, average in zip(
                    self.model.parameters(), self.ema.module.parameters(), strict=True
                ):
                    param.copy_(average)
            self.ema = None
            checkpoint = self.save()
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

    def _global_steps(self, batches: Iterator[Batch], planned: int) -> Iterator[Batch | None]:
        """This rank's batch (None: its shard is exhausted) for each step of the epoch.

        ``planned`` (from the Parquet metadata, the same on every rank) needs no
        collective; one check at the end confirms that every rank has read its whole
        shard, and otherwise the epoch goes on one agreed step at a time."""
        for _ in range(planned):
            batch = next(batches, None)
            if batch is None and not self.ctx.is_distributed:
                return
            yield batch
        while True:
            batch = next(batches, None)
            left = torch.tensor([float(batch is not None)])
            if all_reduce_sum(self.ctx, left).item() == 0:
                return  # every rank has read its whole shard
            yield batch

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
