"""Training losses vs hand-computed values and float64 loop references (paper eq. 2-3)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from dhen_cvr.config import LossConfig, SSLConfig
from dhen_cvr.data.batch import Batch, SequenceBatch
from dhen_cvr.model.output import SequenceEncoding
from dhen_cvr.model.probabilities import esmm_probabilities
from dhen_cvr.train.losses import (
    MaskedItemLoss,
    MultiTaskBCELoss,
    NextActionLoss,
    build_ssl_loss,
    sample_negatives,
)


class TinyEmbedder(nn.Module):
    """A real TargetEmbedder: one embedding table shared by every sequence."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(weight, freeze=False)

    def embed_targets(self, sequence: str, ids: Tensor) -> Tensor:
        return self.table(ids)

    def num_target_ids(self, sequence: str) -> int:
        return self.table.num_embeddings


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


# ----------------------------------------------------------------------------- BCE


def test_multitask_bce_matches_hand_computed_value() -> None:
    # 3 rows, 2 heads; row 2 is masked out of head "cvr"; sample weights (1, 2, 3).
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-1.5, 3.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    weight = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    loss = MultiTaskBCELoss(["click", "cvr"], {"click": 0.5})
    total, per_head = loss(logits, labels, mask, weight)

    # BCE(a, 1) = softplus(-a); BCE(a, 0) = softplus(a).
    click = (1 * softplus(-0.5) + 2 * softplus(2.0) + 3 * softplus(1.5)) / 6
    cvr = (1 * softplus(-1.0) + 2 * softplus(-0.25)) / 3
    assert per_head["click"].item() == pytest.approx(click, abs=1e-12)
    assert per_head["cvr"].item() == pytest.approx(cvr, abs=1e-12)
    assert total.item() == pytest.approx(0.5 * click + 1.0 * cvr, abs=1e-12)


def test_masked_rows_do_not_affect_loss_or_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    labels = (torch.rand(6, 3, generator=g) < 0.5).float()
    mask = torch.ones(6, 3)
    mask[[1, 4], 1] = 0
    mask[:, 2] = 0  # a head with no defined row at all
    loss = MultiTaskBCELoss(["a", "b", "c"])
    total, per_head = loss(logits, labels, mask, torch.ones(6))
    total.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[[1, 4], 1] == 0) and torch.all(logits.grad[:, 2] == 0)
    assert per_head["c"].item() == 0.0

    # Garbage (NaN labels, huge logits) at masked entries changes nothing.
    labels2, logits2 = labels.clone(), logits.detach().clone()
    labels2[[1, 4], 1] = math.nan
    labels2[:, 2] = math.nan
    logits2[[1, 4], 1] = 1e30
    total2, _ = loss(logits2, labels2, mask, torch.ones(6))
    assert total2.item() == pytest.approx(total.item(), abs=1e-6)


def test_head_weight_zero_and_unknown_head() -> None:
    logits, labels = torch.zeros(2, 2), torch.ones(2, 2)
    total, per_head = MultiTaskBCELoss(["a", "b"], {"b": 0.0})(
        logits, labels, torch.ones(2, 2), torch.ones(2)
    )
    assert total.item() == pytest.approx(math.log(2)) and per_head["b"].item() > 0
    with pytest.raises(ValueError, match="unknown heads"):
        MultiTaskBCELoss(["a", "b"], {"typo": 1.0})
    with pytest.raises(ValidationError):
        LossConfig(head_weights={"a": -1.0})
    with pytest.raises(ValidationError):
        LossConfig.model_validate({"ssl": {"weights": {"org": 1.0}, "bogus": 1}})


def test_esmm_loss_equals_bce_of_product_probability_in_float64() -> None:
    g = torch.Generator().manual_seed(1)
    heads = ["checkout", "click", "signup"]
    logits = (3 * torch.randn(16, 3, generator=g)).double()
    labels = (torch.rand(16, 3, generator=g) < 0.4).double()
    mask = (torch.rand(16, 3, generator=g) < 0.8).double()
    weight = torch.rand(16, generator=g).double() + 0.5
    config = LossConfig(formulation="esmm", head_weights={"signup": 2.0})
    total, per_head = MultiTaskBCELoss.from_config(config, heads)(logits, labels, mask, weight)

    probs = esmm_probabilities(logits, heads, "click")
    expected_total = 0.0
    for h, name in enumerate(heads):
        num = den = 0.0
        for b in range(16):
            pc = 1 / (1 + math.exp(-logits[b, 1].item()))
            ph = 1 / (1 + math.exp(-logits[b, h].item()))
            p = pc if name == "click" else pc * ph
            assert probs[b, h].item() == pytest.approx(p, rel=1e-12)
            y, w = labels[b, h].item(), weight[b].item() * mask[b, h].item()
            num += w * -(y * math.log(p) + (1 - y) * math.log(1 - p))
            den += w
        assert per_head[name].item() == pytest.approx(num / den, rel=1e-9)
        expected_total += config.head_weights.get(name, 1.0) * num / den
    assert total.item() == pytest.approx(expected_total, rel=1e-9)


def test_esmm_loss_is_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[60.0, 60.0], [-60.0, -60.0], [60.0, -60.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    loss = MultiTaskBCELoss(["click", "cvr"], formulation="esmm")
    total, _ = loss(logits, labels, torch.ones(3, 2), torch.ones(3))
    total.backward()
    assert torch.isfinite(total) and logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="click head"):
        MultiTaskBCELoss(["a", "b"], formulation="esmm")


# ----------------------------------------------------------------------------- NAL

E1, E2 = (0.5, -1.0), (1.5, 0.25)
BIG = 100.0  # hidden values that must never be used as queries


def hand_case() -> tuple[dict[str, SequenceEncoding], TinyEmbedder]:
    """2 rows, 3 positions, d = 2. Target table: id 0 pad, id 1 = E1, id 2 = E2 (the last
    row, i.e. OOV, so uniform draws from [1, 2) are always id 1)."""
    hidden = torch.tensor(
        [[[BIG, BIG], [0.2, 0.4], [BIG, BIG]], [[-0.3, 0.8], [BIG, BIG], [BIG, BIG]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    mask = torch.tensor([[True, True, True], [True, True, False]])
    target_ids = torch.tensor([[1, 2, 2], [2, 1, 0]])
    table = torch.tensor([[0.0, 0.0], E1, E2], dtype=torch.float64)
    return {"org": SequenceEncoding(hidden, mask, target_ids)}, TinyEmbedder(table)


def test_nal_matches_hand_computed_infonce() -> None:
    # num_positives 1: row 0 predicts t=2 from hidden[0,1]; row 1 predicts t=1 from
    # hidden[1,0]. mixed, 2 negatives: 1 in-batch (the other positive) + 1 uniform (id 1).
    #   row 0: positive id 2, negatives {1, 1}; scores /τ: q·E2 = 0.8, q·E1 = -0.6
    #   row 1: positive id 1, negatives {2, 1 = accidental hit, dropped}; q·E1 = -1.9, q·E2 = -0.5
    config = SSLConfig(num_positives=1, num_negatives=2, weights={"org": 0.5}, temperature=0.5)
    encodings, embedder = hand_case()
    total, per_seq = NextActionLoss(config)(encodings, embedder, torch.Generator().manual_seed(0))
    row0 = -math.log(math.exp(0.8) / (math.exp(0.8) + 2 * math.exp(-0.6)))
    row1 = -math.log(math.exp(-1.9) / (math.exp(-1.9) + math.exp(-0.5)))
    assert row0 == pytest.approx(0.40091740153730765) and row1 == pytest.approx(1.620417409918451)
    assert per_seq["org"].item() == pytest.approx((row0 + row1) / 2, abs=1e-12)
    assert total.item() == pytest.approx(0.5 * (row0 + row1) / 2, abs=1e-12)

    row_sum = SSLConfig(**{**config.model_dump(), "reduction": "row_sum"})
    _, per_seq = NextActionLoss(row_sum)(encodings, embedder)
    assert per_seq["org"].item() == pytest.approx((row0 + row1) / 2, abs=1e-12)  # B = 2

    total.backward()
    grad = encodings["org"].hidden.grad
    assert grad is not None
    used = torch.zeros(2, 3, dtype=torch.bool)
    used[0, 1] = used[1, 0] = True
    assert torch.all(grad[~used] == 0) and torch.all(grad[used].abs().sum(-1) > 0)


def test_nal_with_two_positives_per_row() -> None:
    # num_positives 2, uniform negatives only (always id 1): row 0 predicts t=1 and t=2;
    # row 1 predicts t=1 (its t=0 has no predecessor).
    config = SSLConfig(num_positives=2, num_negatives=3, weights={"org": 1.0}, negatives="uniform")
    encodings, embedder = hand_case()
    h = encodings["org"].hidden.detach()
    _, per_seq = NextActionLoss(config)(encodings, embedder)

    def nll(q: Tensor, pos: tuple[float, float], negatives: list[tuple[float, float]]) -> float:
        s = [float(q[0]) * pos[0] + float(q[1]) * pos[1]]
        s += [float(q[0]) * n[0] + float(q[1]) * n[1] for n in negatives]
        return -s[0] + math.log(sum(math.exp(x) for x in s))

    expected = [
        nll(h[0, 0], E2, [E1, E1, E1]),  # row 0, t=1: target id 2
        nll(h[0, 1], E2, [E1, E1, E1]),  # row 0, t=2: target id 2
        nll(h[1, 0], E1, []),  # row 1, t=1: target id 1, every negative is a hit
    ]
    assert expected[2] == 0.0
    assert per_seq["org"].item() == pytest.approx(sum(expected) / 3, abs=1e-12)


def reference_nal(encoding: SequenceEncoding, table: Tensor, config: SSLConfig, seed: int) -> float:
    """Float64 explicit loops: positions, queries, negatives re-drawn with the same seed."""
    hidden, mask, ids = encoding.hidden.double(), encoding.mask, encoding.target_ids
    pairs = []
    for b in range(mask.shape[0]):
        valid = [t for t in range(mask.shape[1]) if mask[b, t]]
        for t in valid[-config.num_positives :]:
            if t > 0 and mask[b, t - 1]:
                pairs.append((b, t))
    assert len(pairs) > 1  # so in-batch draws always exist
    pos_ids = torch.tensor([int(ids[b, t]) for b, t in pairs])
    neg = sample_negatives(
        pos_ids,
        config.num_negatives,
        config.negatives,
        table.shape[0],
        torch.Generator().manual_seed(seed),
    )

    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v] if config.normalize else v

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / config.temperature

    losses = []
    for i, (b, t) in enumerate(pairs):
        q = unit(hidden[b, t - 1].tolist())
        s_pos = dot(q, unit(table[int(pos_ids[i])].tolist()))
        denom = math.exp(s_pos)
        for k in range(config.num_negatives):
            neg_id = int(neg.ids[i, k])
            if neg_id != int(pos_ids[i]):  # accidental hits leave the denominator
                denom += math.exp(dot(q, unit(table[neg_id].tolist())))
        losses.append(math.log(denom) - s_pos)
    if config.reduction == "row_sum":
        return sum(losses) / mask.shape[0]
    return sum(losses) / len(losses)


@pytest.mark.parametrize(
    ("negatives", "normalize", "temperature", "reduction"),
    [
        ("mixed", False, 1.0, "mean"),
        ("in_batch", True, 0.1, "mean"),
        ("uniform", False, 0.7, "row_sum"),
    ],
)
def test_nal_matches_float64_loop_reference(
    negatives: str, normalize: bool, temperature: float, reduction: str
) -> None:
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([6, 3, 1, 0, 5])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    table = torch.randn(9, 4, generator=g, dtype=torch.float64)
    ids = torch.where(mask, torch.randint(1, 9, (5, 6), generator=g), 0)
    hidden = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    config = SSLConfig.model_validate(
        {
            "num_positives": 3,
            "num_negatives": 5,
            "weights": {"ads": 1.0},
            "negatives": negatives,
            "normalize": normalize,
            "temperature": temperature,
            "reduction": reduction,
        }
    )
    encoding = SequenceEncoding(hidden, mask, ids)
    _, per_seq = NextActionLoss(config)(
        {"ads": encoding}, TinyEmbedder(table), torch.Generator().manual_seed(11)
    )
    expected = reference_nal(encoding, table, config, seed=11)
    assert per_seq["ads"].item() == pytest.approx(expected, abs=1e-10)


def test_negatives_never_equal_the_positive() -> None:
    g = torch.Generator().manual_seed(5)
    for trial in range(300):
        n = int(torch.randint(1, 12, (1,), generator=g))
        num_ids = int(torch.randint(3, 7, (1,), generator=g))  # tiny id space: many hits
        positives = torch.randint(1, num_ids, (n,), generator=g)
        source = ("in_batch", "uniform", "mixed")[trial % 3]
        neg = sample_negatives(positives, 7, source, num_ids, g)  # type: ignore[arg-type]
        assert neg.ids.shape == neg.valid.shape == (n, 7)
        assert not (neg.ids == positives[:, None])[neg.valid].any()
        # Every non-hit uniform draw stays valid, and draws never hit padding or OOV.
        k_b = neg.in_batch_index.shape[1]
        uniform_hit = neg.uniform_ids == positives[:, None]
        assert torch.equal(neg.valid[:, k_b:], ~uniform_hit)
        assert ((neg.uniform_ids >= 1) & (neg.uniform_ids <= num_ids - 2)).all()
        if n > 1:  # in-batch draws are other positions
            assert not (neg.in_batch_index == torch.arange(n)[:, None]).any()
        else:
            assert not neg.valid[:, :k_b].any()
    with pytest.raises(ValueError, match="at least one real id"):
        sample_negatives(torch.tensor([1]), 2, "uniform", 2)


def test_weight_zero_disables_a_sequence() -> None:
    g = torch.Generator().manual_seed(7)
    mask = torch.ones(3, 4, dtype=torch.bool)
    ids = torch.randint(1, 5, (3, 4), generator=g)
    table = torch.randn(6, 2, generator=g)
    org = SequenceEncoding(torch.randn(3, 4, 2, generator=g, requires_grad=True), mask, ids)
    ads = SequenceEncoding(torch.randn(3, 4, 2, generator=g, requires_grad=True), mask, ids)
    both = {"org": org, "ads": ads}
    config = SSLConfig(weights={"org": 0.0, "ads": 2.0}, num_negatives=4)
    total, per_seq = NextActionLoss(config)(both, TinyEmbedder(table))
    assert set(per_seq) == {"ads"}
    assert total.item() == pytest.approx(2.0 * per_seq["ads"].item())
    total.backward()
    assert org.hidden.grad is None and ads.hidden.grad is not None

    assert build_ssl_loss(SSLConfig(weights={"org": 0.0})) is None
    assert build_ssl_loss(SSLConfig(objective="none", weights={"org": 1.0})) is None
    assert isinstance(build_ssl_loss(SSLConfig(weights={"org": 1.0})), NextActionLoss)
    assert isinstance(build_ssl_loss(SSLConfig(objective="mlm", weights={"a": 1})), MaskedItemLoss)
    with pytest.raises(ValidationError):
        SSLConfig(weights={"org": -1.0})
    with pytest.raises(ValueError, match="unknown sequences"):
        SSLConfig(weights={"orgg": 1.0}).check_names(["org", "ads"])


def test_no_predicted_position_gives_zero_with_a_graph() -> None:
    hidden = torch.randn(2, 3, 2, requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    encoding = SequenceEncoding(hidden, mask, torch.zeros(2, 3, dtype=torch.long))
    total, per_seq = NextActionLoss(SSLConfig(weights={"org": 1.0}))(
        {"org": encoding}, TinyEmbedder(torch.randn(4, 2))
    )
    assert total.item() == 0.0 and per_seq["org"].item() == 0.0
    total.backward()
    assert hidden.grad is not None and torch.all(hidden.grad == 0)


# ----------------------------------------------------------------------------- MLM


def test_mlm_matches_hand_computed_value() -> None:
    # Bidirectional output at a masked position t scores the item at t itself.
    encodings, embedder = hand_case()
    enc = encodings["org"]
    hidden = enc.hidden.detach().clone()
    hidden[0, 2] = torch.tensor([0.2, 0.4], dtype=torch.float64)
    mlm_mask = torch.tensor([[False, False, True], [True, False, True]])  # [1, 2] is padding
    encoding = SequenceEncoding(hidden, enc.mask, enc.target_ids, mlm_mask)
    config = SSLConfig(objective="mlm", weights={"org": 1.0}, num_negatives=2, negatives="uniform")
    _, per_seq = MaskedItemLoss(config)({"org": encoding}, embedder)
    # row 0, t=2: q = (0.2, 0.4), positive id 2 (E2): q·E2 = 0.4, q·E1 = -0.3, two negatives
    # row 1, t=0: q = (-0.3, 0.8), positive id 2 (E2): q·E2 = -0.25, q·E1 = -0.95
    row0 = math.log(math.exp(0.4) + 2 * math.exp(-0.3)) - 0.4
    row1 = math.log(math.exp(-0.25) + 2 * math.exp(-0.95)) + 0.25
    assert per_seq["org"].item() == pytest.approx((row0 + row1) / 2, abs=1e-12)

    with pytest.raises(ValueError, match="no mlm_mask"):
        MaskedItemLoss(config)(encodings, embedder)


def make_batch(lengths: list[int], t: int) -> Batch:
    b = len(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    seq = SequenceBatch(
        ids={"item": torch.where(mask, 1, 0)},
        time=torch.zeros(b, t, 2),
        mask=mask,
        lengths=torch.tensor(lengths),
    )
    return Batch(
        dense=torch.zeros(b, 0),
        pretrained={},
        categorical={},
        sequences={"org": seq},
        labels=torch.zeros(b, 1),
        label_mask=torch.ones(b, 1),
        inclusion_prob=torch.ones(b),
        weight=torch.ones(b),
    )


def test_mlm_sample_mask_bounds_and_rate() -> None:
    lengths = [0, 1, 2, 5, 40, 200, 200, 200]
    batch = make_batch(lengths, 200)
    config = SSLConfig(objective="mlm", weights={"org": 1.0}, num_positives=60, mlm_mask_prob=0.15)
    loss = MaskedItemLoss(config)
    g = torch.Generator().manual_seed(0)
    long_fraction = []
    for _ in range(50):
        masked = loss.sample_mask(batch, g)["org"]
        assert not (masked & ~batch.sequences["org"].mask).any()
        counts = masked.sum(1).tolist()
        for length, count in zip(lengths, counts, strict=True):
            if length < 2:
                assert count == 0
            else:
                assert 1 <= count <= min(60, length - 1)
        long_fraction += [c / 200 for c in counts[5:]]
    assert sum(long_fraction) / len(long_fraction) == pytest.approx(0.15, abs=0.01)
    # A small cap binds: never more than num_positives per row.
    capped = MaskedItemLoss(SSLConfig(objective="mlm", weights={"org": 1.0}, num_positives=3))
    assert capped.sample_mask(batch, g)["org"].sum(1).max().item() == 3
