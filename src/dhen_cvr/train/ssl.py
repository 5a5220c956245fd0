"""Self-supervised sequence losses (paper section 3.2, eq. 2-3; Table 3; DESIGN section 4.2).

Both objectives score an encoder output ``q`` against the embedding of the true item
``k+`` and ``num_negatives`` sampled items ``k-`` with InfoNCE (paper eq. 3)::

    L = -log( exp(q·k+ / τ) / (exp(q·k+ / τ) + Σ_k- exp(q·k- / τ)) )

* :class:`NextActionLoss` (NAL): the causal encoder output at ``t-1`` predicts the item
  at ``t``, for the last ``num_positives`` valid positions of each sequence.
* :class:`MaskedItemLoss` (MLM): random items are replaced by a [MASK] input, the encoder
  runs bidirectionally, and its output at ``t`` predicts the masked item at ``t``.

Negatives come from the batch (the targets of the other predicted positions, whose
embeddings are reused), from the id space uniformly, or half and half
(:func:`sample_negatives`). A negative whose id equals the positive's ("accidental hit")
is removed from the denominator, so a negative never equals the positive.

The loss of a sequence S is averaged over its predicted positions (``reduction="mean"``),
or summed over positions per row and averaged over rows (``"row_sum"``, the scale of
eq. 3 where L(S) sums over t; Table 3's small weights such as 2e-4 are on that scale).
The total is ``Σ_S weights[S] * L(S)``; a sequence with weight 0 (or none) is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dhen_cvr.config.loss import NegativeSource, SSLConfig
from dhen_cvr.data.batch import Batch
from dhen_cvr.model.output import SequenceEncoding, TargetEmbedder

__all__ = [
    "MaskedItemLoss",
    "NextActionLoss",
    "SampledNegatives",
    "build_ssl_loss",
    "sample_negatives",
]


@dataclass(frozen=True)
class SampledNegatives:
    """``K`` negatives for each of ``N`` positives.

    in_batch_index: ``N x K_b`` long, index of another positive whose target is used
    uniform_ids:    ``N x K_u`` long, ids drawn uniformly from the id space
    ids:            ``N x K`` long, all negative ids (in-batch columns first)
    valid:          ``N x K`` bool, False for an accidental hit (id == the positive's) or
                    an in-batch draw when the batch has a single positive
    """

    in_batch_index: Tensor
    uniform_ids: Tensor
    ids: Tensor
    valid: Tensor


def sample_negatives(
    positive_ids: Tensor,
    num_negatives: int,
    source: NegativeSource,
    num_target_ids: int,
    generator: torch.Generator | None = None,
) -> SampledNegatives:
    """Draw ``num_negatives`` negatives per positive (``positive_ids``: ``N``).

    In-batch draws pick one of the *other* ``N - 1`` positives uniformly; uniform draws
    pick an id in ``[1, num_target_ids - 1)`` (the padding row 0 and the OOV row
    ``num_target_ids - 1`` are never drawn). ``generator`` must live on the ids' device.
    """
    n, device = positive_ids.shape[0], positive_ids.device
    k_batch = {"in_batch": num_negatives, "uniform": 0, "mixed": (num_negatives + 1) // 2}[source]
    k_uniform = num_negatives - k_batch

    if n > 1:
        index = torch.randint(0, n - 1, (n, k_batch), generator=generator, device=device)
        index = index + (index >= torch.arange(n, device=device)[:, None]).long()  # skip self
        batch_valid = torch.ones(n, k_batch, dtype=torch.bool, device=device)
    else:
        index = torch.zeros(n, k_batch, dtype=torch.long, device=device)
        batch_valid = torch.zeros(n, k_batch, dtype=torch.bool, device=device)

    if k_uniform > 0 and num_target_ids < 3:
        raise ValueError(
            f"uniform SSL negatives need at least one real id, but the target table has "
            f"{num_target_ids} rows (padding + OOV only)"
        )
    uniform_ids = torch.randint(
        1, max(num_target_ids - 1, 2), (n, k_uniform), generator=generator, device=device
    )

    ids = torch.cat([positive_ids[index], uniform_ids], dim=1)
    valid = torch.cat([batch_valid, torch.ones_like(uniform_ids, dtype=torch.bool)], dim=1)
    valid = valid & (ids != positive_ids[:, None])
    return SampledNegatives(index, uniform_ids, ids, valid)


class _SequenceInfoNCE(nn.Module):
    """InfoNCE over (query position, target position) pairs of each active sequence;
    subclasses choose the pairs."""

    def __init__(self, config: SSLConfig) -> None:
        super().__init__()
        self.config = config

    def _pairs(self, name: str, encoding: SequenceEncoding) -> tuple[Tensor, Tensor, Tensor]:
        """(row, query position, target position), each ``N`` long."""
        raise NotImplementedError

    def forward(
        self,
        encodings: dict[str, SequenceEncoding],
        embedder: TargetEmbedder,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns ``(Σ_S weight_S * L(S), {S: L(S)})`` over the active sequences present in
        ``encodings`` (iterated in the config's ``weights`` order, for reproducible draws)."""
        per_sequence: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, weight in self.config.active.items():
            if name not in encodings:
                continue
            loss = self.sequence_loss(name, encodings[name], embedder, generator)
            per_sequence[name] = loss
            total = weight * loss if total is None else total + weight * loss
        if total is None:
            device = next(iter(encodings.values())).hidden.device if encodings else None
            total = torch.zeros((), device=device)
        return total, per_sequence

    def sequence_loss(
        self,
        name: str,
        encoding: SequenceEncoding,
        embedder: TargetEmbedder,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """L(S) for one sequence (a scalar; ``hidden.sum() * 0`` when nothing is predicted,
        so the graph and DDP's gradient buckets stay intact)."""
        cfg = self.config
        hidden = encoding.hidden
        rows, query_t, target_t = self._pairs(name, encoding)
        if rows.numel() == 0:
            return hidden.sum() * 0.0

        dtype = torch.promote_types(hidden.dtype, torch.float32)
        query = hidden[rows, query_t].to(dtype)  # N x d
        positive_ids = encoding.target_ids[rows, target_t]  # N
        positive = embedder.embed_targets(name, positive_ids).to(dtype)  # N x d

        negatives = sample_negatives(
            positive_ids,
            cfg.num_negatives,
            cfg.negatives,
            embedder.num_target_ids(name),
            generator,
        )
        negative = torch.cat(
            [
                positive[negatives.in_batch_index],  # N x K_b x d (embeddings reused)
                embedder.embed_targets(name, negatives.uniform_ids).to(dtype),  # N x K_u x d
            ],
            dim=1,
        )
        if cfg.normalize:
            query, positive, negative = (
                F.normalize(x, dim=-1) for x in (query, positive, negative)
            )

        pos_score = (query * positive).sum(-1, keepdim=True)  # N x 1
        neg_score = torch.einsum("nd,nkd->nk", query, negative)  # N x K
        neg_score = neg_score.masked_fill(~negatives.valid, -math.inf)
        scores = torch.cat([pos_score, neg_score], dim=1) / cfg.temperature
        nll = torch.logsumexp(scores, dim=1) - scores[:, 0]  # N
        if cfg.reduction == "row_sum":
            return nll.sum() / hidden.shape[0]
        return nll.mean()


class NextActionLoss(_SequenceInfoNCE):
    """NAL (paper eq. 2-3): ``hidden[:, t-1]`` scores the item at ``t`` for every ``t``
    with items at ``t`` and ``t-1`` among the row's last ``num_positives`` valid items."""

    def _pairs(self, name: str, encoding: SequenceEncoding) -> tuple[Tensor, Tensor, Tensor]:
        mask = encoding.mask.bool()
        valid_from_here = mask.flip(1).cumsum(1).flip(1)  # B x T: valid items at >= t
        prev_valid = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
        selected = mask & prev_valid & (valid_from_here <= self.config.num_positives)
        rows, t = selected.nonzero(as_tuple=True)
        return rows, t - 1, t


class MaskedItemLoss(_SequenceInfoNCE):
    """MLM (Table 3's last row): the bidirectional output at a masked position ``t``
    scores the original item at ``t``. Call :meth:`sample_mask` on the batch, run the
    model with the result (it sets ``SequenceEncoding.mlm_mask``), then this loss."""

    def sample_mask(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Per active sequence in ``batch``, a ``B x T`` bool mask of the items to hide.

        Each valid item is chosen with probability ``mlm_mask_prob``; a row with ``L >= 2``
        items then hides between 1 and ``min(num_positives, L - 1)`` of them (at least one
        so every such row trains, at most ``L - 1`` so one item stays visible; extra
        choices are dropped at random). Rows with fewer than 2 items hide nothing.
        """
        cfg = self.config
        out: dict[str, Tensor] = {}
        for name in cfg.active:
            if name not in batch.sequences:
                continue
            mask = batch.sequences[name].mask.bool()
            keys = torch.rand(mask.shape, generator=generator, device=mask.device)
            keys = keys.masked_fill(~mask, 2.0)  # padding sorts last
            length = mask.sum(1)
            chosen = ((keys < cfg.mlm_mask_prob) & mask).sum(1)
            upper = torch.clamp(length - 1, max=cfg.num_positives)
            count = torch.minimum(chosen.clamp(min=1), upper).clamp(min=0)  # 0 if L < 2
            rank = keys.argsort(dim=1).argsort(dim=1)  # 0 = smallest key
            out[name] = mask & (rank < count[:, None])
        return out

    def _pairs(self, name: str, encoding: SequenceEncoding) -> tuple[Tensor, Tensor, Tensor]:
        if encoding.mlm_mask is None:
            raise ValueError(
                f"sequence {name!r} has no mlm_mask: run the model with "
                "mlm_mask=MaskedItemLoss.sample_mask(batch) before the MLM loss"
            )
        rows, t = (encoding.mlm_mask.bool() & encoding.mask.bool()).nonzero(as_tuple=True)
        return rows, t, t


def build_ssl_loss(config: SSLConfig) -> NextActionLoss | MaskedItemLoss | None:
    """The configured objective, or None when it is off or every weight is 0."""
    if not config.active:
        return None
    return NextActionLoss(config) if config.objective == "nal" else MaskedItemLoss(config)
