"""Intercept recalibration of the heads after training (beyond the paper).

A network trained with Adam on rare positives ends with head biases that under-predict
their own training data by several percent (measured on the synthetic world: sum p / sum y
of 0.86-0.96 per head *in sample*), and every served pCVR inherits it. After training, one
pass over the training days in eval mode finds, per head ``h`` (the any-keep-label head
included), the offset ``b_h`` that solves

    Σ_i w_i m_ih sigmoid(l_ih + b_h) = Σ_i w_i m_ih y_ih

(``l`` the head's logits, ``m`` its label mask, ``w`` sample weights): the maximum-
likelihood intercept given everything else, by Newton's method (the left side is
increasing in ``b_h``). With independent heads it moves no ranking (ROC-AUC and PR-AUC
are unchanged); it is stored in :attr:`MultiTaskHeads.offset`, so checkpoints and exports carry it.

In the ESMM formulation a CVR head's probability is ``sigmoid(l_click) sigmoid(l_h)``, so
its offset solves ``Σ_i w_i m_ih s_i sigmoid(l_ih + b_h) = Σ_i w_i m_ih y_ih`` with
``s_i = sigmoid(l_i,click + b_click)``, the click head's recalibrated probability. Shifting a
CVR tower's intercept does reorder the product ``pCTR * pCVR`` slightly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.probabilities import esmm_click_index
from dhen_cvr.runtime.distributed import DistContext, all_gather_objects

__all__ = ["fit_intercepts", "recalibrate_heads"]


def fit_intercepts(
    logits: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    iterations: int = 50,
    *,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``N x H`` logits, labels and weights (0 where a label is undefined) -> ``H`` offsets
    ``b`` with ``Σ w s sigmoid(l + b) = Σ w y`` per column, ``s`` = ``scale`` (``N x H`` in
    ``[0, 1]``, the ESMM click probability; default 1). 0 for a column whose target is not
    strictly between 0 and ``Σ w s``."""
    l64, y, w = (np.asarray(a, dtype=np.float64) for a in (logits, labels, weights))
    ws = w if scale is None else w * np.asarray(scale, dtype=np.float64)
    target = (w * y).sum(0)
    total = ws.sum(0)
    b = np.zeros(l64.shape[1])
    solvable = (target > 0) & (target < total)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(l64 + b)))
        f = (ws * p).sum(0) - target
        slope = (ws * p * (1 - p)).sum(0)
        step = np.where(solvable & (slope > 0), f / np.maximum(slope, 1e-300), 0.0)
        b -= np.clip(step, -2.0, 2.0)
        if np.all(np.abs(f) <= 1e-9 * np.maximum(target, 1e-12)):
            break
    return np.where(solvable, b, 0.0)


@torch.no_grad()
def recalibrate_heads(
    model: CVRModel,
    spec: FeatureSpec,
    days: list[Path],
    ctx: DistContext,
    batch_size: int,
    *,
    esmm_click_head: str | None = None,
) -> np.ndarray:
    """Score ``days`` in eval mode and add the fitted offsets to the model's heads.

    ``esmm_click_head``: the click head of a run trained in the ESMM formulation (its other
    heads are then fitted as ``pCTR * pCVR``); None for independent heads. Collective under ``torchrun`` (each rank scores its shard; the sums are exact over
    all rows). Returns the offsets added, one per head (plus the keep head, last)."""
    was_training = model.training
    model.eval()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for day in days:
        stream = ParquetBatchStream(
            [day],
            spec,
            batch_size=batch_size,
            shuffle=False,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        for batch in make_loader(stream):
            batch = batch.to(ctx.device)
            out = model.encode(
                batch.dense, batch.pretrained, batch.categorical, batch.sequences, ssl=False
            )
            logits, labels = out.logits, batch.labels
            weight = batch.label_mask * batch.weight[:, None]
            keep = model.keep_target(batch.labels, batch.label_mask)
            if out.keep_logit is not None and keep is not None:
                logits = torch.cat([logits, out.keep_logit[:, None]], 1)
                labels = torch.cat([labels, keep[:, None]], 1)
                weight = torch.cat([weight, batch.weight[:, None]], 1)
            parts.append(tuple(t.double().cpu().numpy() for t in (logits, labels, weight)))  # type: ignore[arg-type]
    model.train(was_training)
    gathered = [p for rank_parts in all_gather_objects(ctx, parts) for p in rank_parts]
    if not gathered:
        return np.zeros(0)
    logits_np, labels_np, weight_np = (np.concatenate(c) for c in zip(*gathered, strict=True))
    offsets = fit_intercepts(logits_np, labels_np, weight_np)
    if esmm_click_head is not None:
        click = esmm_click_index(model.head_names, esmm_click_head)
        scale = np.ones_like(logits_np)
        cvr = [j for j in range(len(model.head_names)) if j != click]  # not the keep head
        scale[:, cvr] = 1.0 / (1.0 + np.exp(-(logits_np[:, [click]] + offsets[click])))
        offsets = fit_intercepts(logits_np, labels_np, weight_np, scale=scale)
    model.heads.shift_offsets(torch.as_tensor(offsets))
    return offsets
