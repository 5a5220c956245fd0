"""The multi-task DHEN CVR model (paper Figure 2): tokens -> DHEN -> one head per task.

::

    X = [feature tokens ; sequence tokens]        B x L x D   (tokens.py, sequence.py)
    Y = DHEN(X)                                   B x L x D   (dhen.py)
    logits = heads(flatten(Y))                    B x H       (heads.py, spec label order)

plus, per behaviour sequence, the encoder's per-position outputs for the self-supervised
loss (:class:`~dhen_cvr.model.output.SequenceEncoding`), whose targets are embedded by
:meth:`CVRModel.embed_targets` (the :class:`~dhen_cvr.model.output.TargetEmbedder` protocol).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dhen_cvr.data.batch import Batch, SequenceBatch
from dhen_cvr.data.spec import FeatureCategory, FeatureSpec
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.model.attribute_shares import (
    AttributeShareTokens,
    auto_share_configs,
    share_fields,
)
from dhen_cvr.model.config import ModelConfig
from dhen_cvr.model.dhen import DHEN, CrossingContext
from dhen_cvr.model.heads import MultiTaskHeads
from dhen_cvr.model.output import ModelOutput, SequenceEncoding
from dhen_cvr.model.probabilities import esmm_click_index, esmm_probabilities
from dhen_cvr.model.sequence import SequenceEncoders
from dhen_cvr.model.tokens import EmbeddingTables, FeatureTokenizer

__all__ = ["KEEP_HEAD", "CVRModel", "ServedCVRModel", "flat_inputs"]

KEEP_HEAD = "any_keep_label"


class CVRModel(nn.Module):
    """Feature tokens, sequence encoders, DHEN backbone and multi-task heads.

    ``spec`` is the data's full feature spec (batches are built from it);
    ``config.drop_categories`` removes those categories' features from the model's input.
    ``dense_stats`` are the fitted min-max statistics (also settable later with
    :meth:`set_dense_stats`; they are buffers, so they are saved with the weights).
    """

    def __init__(
        self, spec: FeatureSpec, config: ModelConfig, dense_stats: MinMaxStats | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.data_spec = spec
        self.spec = spec.with_ssl_targets(config.sequence.ssl_targets).without_categories(
            config.drop_categories
        )
        self.tables = EmbeddingTables(self.spec, config.embedding_dim)
        self.features = FeatureTokenizer(
            self.spec,
            self.tables,
            config.dim,
            dense_input_names=[f.name for f in spec.dense],
            dense_bins=config.dense_bins,
            dense_tokens=config.dense_tokens,
        )
        candidates = [f for f in self.spec.categorical if f.category == FeatureCategory.candidate]
        self.sequences = SequenceEncoders(
            self.spec.sequences,
            self.tables,
            config.sequence,
            config.dim,
            config.ssl_dim,
            candidates,
        )
        if config.attribute_shares == "auto":
            shares = auto_share_configs(
                self.spec.sequences,
                candidates,
                self.tables,
                config.sequence.match_split_max_rows,
            )
        else:
            shares = config.attribute_shares
            for entry in shares:  # names checked on the data's full spec
                share_fields(spec.sequences, entry)
        self.attribute_shares = (
            AttributeShareTokens(
                self.spec.sequences,
                candidates,
                self.tables,
                shares,
                config.dim,
                len(spec.label_names) + (1 if spec.keep_label_names else 0),
            )
            if shares
            else None
        )
        share_names = self.attribute_shares.token_names if self.attribute_shares else []
        self.token_names: list[str] = (
            self.features.token_names + share_names + self.sequences.token_names
        )
        if not self.token_names:
            raise ValueError(
                f"no input tokens left after dropping categories {config.drop_categories}"
            )
        self.context = CrossingContext(
            num_tokens=len(self.token_names),
            dim=config.dim,
            candidate_index=self.features.candidate_token,
        )
        self.backbone = DHEN(config.dhen, self.context)
        # With down-sampling, one more head learns P_s(any keep label | x), which the exact
        # correction back to the full population needs (SamplingSpec, DESIGN 10).
        self.keep_labels = spec.keep_label_names
        head_names = spec.label_names + ([KEEP_HEAD] if self.keep_labels else [])
        self.heads = MultiTaskHeads(
            self.context.flat_dim, head_names, config.head_hidden, config.head_dropout
        )
        if dense_stats is not None:
            self.set_dense_stats(dense_stats)

    # ---- names ----------------------------------------------------------------------
    @property
    def head_names(self) -> list[str]:
        """All heads, in spec label order (the columns of ``ModelOutput.logits``)."""
        return self.spec.label_names

    @property
    def served_head_names(self) -> list[str]:
        """Heads exported for serving (``serve: false`` ones, e.g. CTR, left out)."""
        return [lb.name for lb in self.spec.labels if lb.serve]

    @property
    def sequence_max_lens(self) -> dict[str, int]:
        """Items kept per sequence (spec ``max_len`` capped by ``sequence.max_len_cap``);
        a loader that cuts to these saves the model a gather."""
        return dict(self.sequences.max_lens)

    def keep_target(self, labels: Tensor, label_mask: Tensor) -> Tensor | None:
        """``B`` target of the any-keep-label head: 1 where any keep label is 1 (and
        defined), from ``B x H`` labels and masks; None when the model has no such head."""
        if not self.keep_labels:
            return None
        index = [self.head_names.index(n) for n in self.keep_labels]
        return (labels[:, index] * label_mask[:, index]).amax(dim=1)

    def set_dense_stats(self, stats: MinMaxStats) -> None:
        """Install fitted min-max statistics (matched by feature name)."""
        self.features.scaler.set_stats(stats)

    # ---- forward --------------------------------------------------------------------
    def forward(self, batch: Batch, mlm_mask: dict[str, Tensor] | None = None) -> ModelOutput:
        """``mlm_mask``: per sequence ``B x T`` bool, items replaced by ``[MASK]`` (needs a
        bidirectional encoder, ``sequence.causal: false``)."""
        return self.encode(
            batch.dense, batch.pretrained, batch.categorical, batch.sequences, mlm_mask
        )

    def encode(
        self,
        dense: Tensor,
        pretrained: dict[str, Tensor],
        categorical: dict[str, Tensor],
        sequences: dict[str, SequenceBatch],
        mlm_mask: dict[str, Tensor] | None = None,
        ssl: bool = True,
    ) -> ModelOutput:
        """The forward pass on the model-input parts of a :class:`Batch`; ``ssl=False``
        skips the per-position SSL outputs (``ModelOutput.sequences`` is then empty)."""
        feature_tokens, share_logits = self._feature_tokens(dense, pretrained, categorical)
        query = self.features.candidate_summary(feature_tokens)
        sequence_tokens, encodings = self.sequences(
            self.tables, sequences, query, mlm_mask, ssl=ssl, candidates=categorical
        )
        return self._head(feature_tokens, sequence_tokens, encodings, share_logits)

    def score_candidates(
        self,
        dense: Tensor,
        pretrained: dict[str, Tensor],
        categorical: dict[str, Tensor],
        sequences: dict[str, SequenceBatch],
    ) -> ModelOutput:
        """One request: a user's sequences (``1 x T`` each) against ``N`` candidate rows of
        non-sequence features (``N x ...``: the ad's features and any user or context
        feature, repeated; they are cheap) -> ``N`` rows of logits, equal to
        :meth:`encode` on the user's sequences repeated ``N`` times. The sequence
        encoders, most of the model's cost, run once per request (serving, DESIGN 7)."""
        feature_tokens, share_logits = self._feature_tokens(dense, pretrained, categorical)
        n = feature_tokens.shape[0]
        query = self.features.candidate_summary(feature_tokens)
        sequence_tokens = self.sequences.for_candidates(
            self.tables, sequences, query, categorical, n
        )
        return self._head(feature_tokens, sequence_tokens, {}, share_logits)

    def _feature_tokens(
        self, dense: Tensor, pretrained: dict[str, Tensor], categorical: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        """-> (``B x L_f x D`` feature tokens, then any attribute-share tokens; ``B x H``
        attribute-share logit terms or None)."""
        tokens = self.features(self.tables, dense, pretrained, categorical)
        if self.attribute_shares is None or not self.attribute_shares.configs:
            return tokens, None
        share_tokens, share_logits = self.attribute_shares(categorical)
        if share_tokens is not None:
            tokens = torch.cat([tokens, share_tokens.to(tokens.dtype)], dim=1)
        return tokens, share_logits

    def _head(
        self,
        feature_tokens: Tensor,
        sequence_tokens: Tensor | None,
        encodings: dict[str, SequenceEncoding],
        share_logits: Tensor | None = None,
    ) -> ModelOutput:
        parts = [t for t in (feature_tokens, sequence_tokens) if t is not None and t.shape[1]]
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        y = self.backbone(x)
        logits = self.heads(y.flatten(1))
        if share_logits is not None:
            logits = logits + share_logits.to(logits.dtype)
        if not self.keep_labels:
            return ModelOutput(logits=logits, sequences=encodings)
        return ModelOutput(logits=logits[:, :-1], sequences=encodings, keep_logit=logits[:, -1])

    # ---- TargetEmbedder -------------------------------------------------------------
    def embed_targets(self, sequence: str, ids: Tensor) -> Tensor:
        """Target-field ids ``(...)`` of ``sequence`` -> ``(..., d_ssl)``."""
        return self.sequences.tower(sequence).embed_targets(self.tables, ids)

    def num_target_ids(self, sequence: str) -> int:
        """Rows of the target field's table (row 0 = padding; ``1..n-1`` real ids and OOV)."""
        target = self.sequences.tower(sequence).feature.target
        return self.tables.table(target).num_embeddings


class ServedCVRModel(nn.Module):
    """The inference path on plain tensors, for ``torch.export`` / ``torch.jit.trace``.

    ``forward(dense, pretrained, categorical, *sequences) -> B x H_served``: logits of the
    served heads (:attr:`CVRModel.served_head_names` order), or with ``probabilities=True``
    calibrated full-population probabilities ``p_h = r p_s,h / (1 - (1 - r) a_s)``, which
    undoes the training data's down-sampling (rows kept when any keep label is 1, else at
    rate ``r = spec.sampling.negative_rate``; paper 5.1, DESIGN 10; ``a_s`` is the model's
    any-keep-label head). ``esmm_click_head``: for a model trained in the ESMM formulation,
    ``p_s,h = sigmoid(click) * sigmoid(logit_h)``.
    Inputs, ``B`` rows:

    - ``dense``: float ``B x n`` raw values, the columns of ``Batch.dense`` (spec order);
    - ``pretrained``: float ``B x sum(dim)``, the model's pre-trained vectors concatenated
      in spec order (``B x 0`` if none);
    - ``categorical``: long ``B x n_cat`` mapped ids, the model's categorical features in
      spec order (``B x 0`` if none);
    - per sequence of the model, in spec order, three tensors: ``ids`` long
      ``B x T x n_fields`` (fields in spec order), ``time`` float ``B x T x 2``,
      ``lengths`` long ``B`` (rows right-padded; the mask is ``arange(T) < lengths``).

    :meth:`flat_inputs` (or :func:`flat_inputs`, from the spec alone) builds this tuple
    from a :class:`Batch`. With ``one_user=True`` the rows are ``N`` candidates of one
    request and each sequence has one row (``ids 1 x T x n_fields``, ``time 1 x T x 2``,
    ``lengths 1``), scored by :meth:`CVRModel.score_candidates` (the user side once).
    The model runs in the mode it is in; call ``.eval()`` first.
    """

    def __init__(
        self,
        model: CVRModel,
        *,
        probabilities: bool = False,
        one_user: bool = False,
        esmm_click_head: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        spec = model.spec
        self.probabilities = probabilities
        self.esmm_click_head = esmm_click_head
        if esmm_click_head is not None:
            esmm_click_index(model.head_names, esmm_click_head)  # ValueError if absent
        self.one_user = one_user
        self.negative_rate = float(spec.sampling.negative_rate)
        self.pretrained = [(f.name, f.dim) for f in spec.pretrained]
        self.categorical = [f.name for f in spec.categorical]
        self.sequence_fields = [(s.name, [f.name for f in s.fields]) for s in spec.sequences]
        labels = model.head_names
        self.register_buffer(
            "served",
            torch.tensor(
                [labels.index(n) for n in model.served_head_names],
                dtype=torch.long,
                device=next(model.parameters()).device,
            ),
        )
        self.served: Tensor

    def flat_inputs(self, batch: Batch) -> tuple[Tensor, ...]:
        """The positional inputs of :meth:`forward` for ``batch``."""
        return flat_inputs(self.model.spec, batch)

    def forward(
        self, dense: Tensor, pretrained: Tensor, categorical: Tensor, *sequences: Tensor
    ) -> Tensor:
        widths = [dim for _, dim in self.pretrained]
        pre = dict(zip([n for n, _ in self.pretrained], pretrained.split(widths, 1), strict=True))
        cat = {name: categorical[:, i] for i, name in enumerate(self.categorical)}
        seqs: dict[str, SequenceBatch] = {}
        for i, (name, fields) in enumerate(self.sequence_fields):
            ids, time, lengths = sequences[3 * i : 3 * i + 3]
            mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
            seqs[name] = SequenceBatch(
                ids={f: ids[..., j] for j, f in enumerate(fields)},
                time=time,
                mask=mask,
                lengths=lengths,
            )
        if self.one_user:
            out = self.model.score_candidates(dense, pre, cat, seqs)
        else:
            out = self.model.encode(dense, pre, cat, seqs, ssl=False)
        if not self.probabilities:
            return out.logits.index_select(1, self.served)
        r = self.negative_rate
        if self.esmm_click_head is None:
            p = torch.sigmoid(out.logits)
        else:
            p = esmm_probabilities(out.logits, self.model.head_names, self.esmm_click_head)
        p = p.index_select(1, self.served)
        any_keep = p if out.keep_logit is None else torch.sigmoid(out.keep_logit)[:, None]
        return r * p / (1 - (1 - r) * any_keep)


def flat_inputs(spec: FeatureSpec, batch: Batch) -> tuple[Tensor, ...]:
    """The positional inputs of :meth:`ServedCVRModel.forward` for ``batch``, from the
    model's spec (:attr:`CVRModel.spec`) alone: no model needed (an exported artefact)."""
    B = batch.dense.shape[0]
    pretrained = [batch.pretrained[f.name].float() for f in spec.pretrained]
    categorical = [batch.categorical[f.name] for f in spec.categorical]
    out: list[Tensor] = [
        batch.dense.float(),
        torch.cat(pretrained, 1) if pretrained else batch.dense.new_zeros(B, 0),
        torch.stack(categorical, 1) if categorical else batch.dense.new_zeros(B, 0).long(),
    ]
    for s in spec.sequences:
        seq = batch.sequences[s.name]
        out += [torch.stack([seq.ids[f.name] for f in s.fields], -1), seq.time, seq.lengths]
    return tuple(out)
