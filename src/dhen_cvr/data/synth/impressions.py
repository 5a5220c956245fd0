"""Logged impressions of one day: who saw which ad when, the features, the truth, the labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dhen_cvr.data.synth.behaviour import (
    ADD_TO_CART,
    CLICK,
    DAY,
    HIDE,
    SAVE,
    Behaviour,
    Interests,
    interest_strength,
)
from dhen_cvr.data.synth.catalogue import HOUR_PROBS, Catalogue, Users
from dhen_cvr.data.synth.config import CONVERSION_TYPES, WorldConfig
from dhen_cvr.data.synth.timeindex import KeyedTimeIndex
from dhen_cvr.data.synth.truth import (
    ClickTerms,
    ConversionTerms,
    click_logit,
    conversion_logits,
    sigmoid,
)

__all__ = [
    "COUNT_WINDOWS",
    "BehaviourIndex",
    "DayImpressions",
    "UserSnapshot",
    "draw_day",
    "truth_terms",
]

# Counting features: name -> (sequence, window in days, per candidate advertiser?).
COUNT_WINDOWS: dict[str, tuple[str, int]] = {
    "n_match_7d": ("match", 7),
    "n_match_30d": ("match", 30),
    "n_conv_7d": ("conv", 7),
    "n_conv_30d": ("conv", 30),
    "n_match_adv_30d": ("match", 30),  # matched conversions at the candidate's advertiser
    "n_ads_click_7d": ("ads", 7),  # ad engagements with action == click
}
INTENT_TAU = 2.0 * DAY
ADVERTISER_TAU = 3.0 * DAY
ATC_TAU = 1.0 * DAY
FUNNEL_WINDOW = 3 * DAY
TARGETED_SHARE = 0.5
RETARGETED_SHARE = 0.2
RETARGET_WINDOW = 7 * DAY


class BehaviourIndex:
    """Time indexes over a chunk's behaviour for the per-impression look-ups."""

    def __init__(self, b: Behaviour, cat: Catalogue, span: int) -> None:
        k, v = cat.n_topics, len(cat.adv_topic)
        org_engaged = b.org.where(b.org.fields["org_action"] != HIDE)
        ads_engaged = b.ads.where(b.ads.fields["ads_action"] != HIDE)
        ads_click = b.ads.where(b.ads.fields["ads_action"] == CLICK)
        org_deep = b.org.where(np.isin(b.org.fields["org_action"], [CLICK, SAVE]))
        atc = b.match.where(b.match.fields["match_action"] == ADD_TO_CART)
        # Recency-weighted topic intent: searches, organic and ad engagements (not hides).
        self.intent = KeyedTimeIndex(
            np.concatenate([b.search.user, org_engaged.user, ads_engaged.user]),
            np.concatenate(
                [
                    b.search.fields["search_topic"],
                    org_engaged.fields["org_topic"],
                    ads_engaged.fields["ads_topic"],
                ]
            ),
            np.concatenate([b.search.t, org_engaged.t, ads_engaged.t]),
            n_keys=k,
            span=span,
        )
        self.ads_advertiser = KeyedTimeIndex(
            ads_engaged.user,
            ads_engaged.fields["ads_advertiser"],
            ads_engaged.t,
            n_keys=v,
            span=span,
        )
        self.atc_advertiser = KeyedTimeIndex(
            atc.user, atc.fields["match_advertiser"], atc.t, n_keys=v, span=span
        )
        self.match_advertiser = KeyedTimeIndex(
            b.match.user, b.match.fields["match_advertiser"], b.match.t, n_keys=v, span=span
        )
        self.per_user = {
            "match": KeyedTimeIndex(b.match.user, None, b.match.t, n_keys=1, span=span),
            "conv": KeyedTimeIndex(b.conv.user, None, b.conv.t, n_keys=1, span=span),
            "ads": KeyedTimeIndex(ads_click.user, None, ads_click.t, n_keys=1, span=span),
        }
        self._match_advertiser = b.match.fields["match_advertiser"]
        self._click_advertiser = ads_click.fields["ads_advertiser"]
        self.org_topic = KeyedTimeIndex(
            org_deep.user, org_deep.fields["org_topic"], org_deep.t, n_keys=k, span=span
        )
        self.ad_click_topic = KeyedTimeIndex(
            ads_click.user, ads_click.fields["ads_topic"], ads_click.t, n_keys=k, span=span
        )

    def counts(
        self, user: np.ndarray, t: np.ndarray, advertiser: np.ndarray
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, (seq, days) in COUNT_WINDOWS.items():
            lo = t - days * DAY
            if name == "n_match_adv_30d":
                out[name] = self.match_advertiser.count(user, advertiser, lo, t)
            else:
                out[name] = self.per_user[seq].count(user, 0, lo, t)
        return out

    def retarget_advertiser(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Advertiser of the user's last matched conversion within 7 days, else of the last
        ad click within 7 days, else -1 (what a retargeting campaign would pick)."""
        lo = t - RETARGET_WINDOW
        match = self.per_user["match"].last_event(user, 0, t, lo)
        click = self.per_user["ads"].last_event(user, 0, t, lo)
        out = np.full(len(user), -1, dtype=np.int64)
        has_click = click >= 0
        out[has_click] = self._click_advertiser[click[has_click]]
        has_match = match >= 0
        out[has_match] = self._match_advertiser[match[has_match]]
        return out

    def funnel(self, user: np.ndarray, topic: np.ndarray, t: np.ndarray) -> np.ndarray:
        """1 where an organic click/save on ``topic`` preceded an ad click on ``topic``,
        both within the last 3 days."""
        first_org = self.org_topic.first_time(user, topic, t - FUNNEL_WINDOW, t)
        last_click = self.ad_click_topic.last_time(user, topic, t)
        return ((first_org < last_click) & (last_click >= t - FUNNEL_WINDOW)).astype(np.float64)


@dataclass(frozen=True)
class UserSnapshot:
    """What the batch pipelines know of a chunk's users at a refresh: the stale, noisy
    pre-trained embedding (U x E) and the predicted top interest (U)."""

    embedding: np.ndarray
    predicted_interest: np.ndarray

    @classmethod
    def at(
        cls,
        interests: Interests,
        day: int,
        cat: Catalogue,
        config: WorldConfig,
        rng: np.random.Generator,
    ) -> UserSnapshot:
        z = interests.log_interest[:, day].astype(np.float64)
        p = interests.probs(day)
        e = config.emb_dim
        emb = p @ cat.topic_emb + config.embedding_noise * rng.normal(
            0, 1 / np.sqrt(e), (len(p), e)
        )
        predicted = (z + rng.gumbel(size=z.shape)).argmax(axis=1)
        return cls(emb.astype(np.float32), predicted.astype(np.int64))


@dataclass
class DayImpressions:
    """All impressions of one logged day for a chunk (before down-sampling).

    ``user`` local index, ``t`` seconds since the world's origin, ``columns`` every
    non-sequence column to write (ids, dense, embeddings), ``labels`` / ``oracle`` per
    head in :data:`~dhen_cvr.data.synth.config.HEADS` order.
    """

    user: np.ndarray
    t: np.ndarray
    columns: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.t)


def _select_ads(
    day: int,
    user: np.ndarray,
    t: np.ndarray,
    interests: Interests,
    index: BehaviourIndex,
    cat: Catalogue,
    config: WorldConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Ad per impression: half targeted on the user's *stale* interests, half by topic
    popularity; then a share retargeted to the advertiser of a recent conversion / click."""
    stale_day = max(day - config.embedding_staleness_days, 0)
    stale = interests.log_interest[user, stale_day].astype(np.float64)
    targeted = rng.random(len(user)) < TARGETED_SHARE
    z = np.where(targeted[:, None], stale, cat.topic_pop[None, :])
    ad = cat.ads_by_topic.draw((z + rng.gumbel(size=z.shape)).argmax(axis=1), rng)
    retarget = index.retarget_advertiser(user, t)
    retarget = np.where(rng.random(len(user)) < RETARGETED_SHARE, retarget, -1)
    chosen = retarget >= 0
    ad[chosen] = cat.ads_by_advertiser.draw(retarget[chosen], rng)
    return ad


def _true_probabilities(
    day: int,
    user: np.ndarray,
    t: np.ndarray,
    hour: np.ndarray,
    ad: np.ndarray,
    users: Users,
    interests: Interests,
    index: BehaviourIndex,
    cat: Catalogue,
    config: WorldConfig,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(P(click) as N, P(type | click) as N x 3, the terms of both logits by name) from the
    latent state and the behaviour."""
    adv, topic = cat.ad_adv[ad], cat.ad_topic[ad]
    probs = interests.probs(day)[user, topic]
    interest = interest_strength(probs, cat.n_topics)
    intent = np.log1p(index.intent.decayed_sum(user, topic, t, INTENT_TAU, max_events=32))
    engagement = np.log1p(
        index.ads_advertiser.decayed_sum(user, adv, t, ADVERTISER_TAU, max_events=16)
    )
    click = ClickTerms(
        interest=interest,
        intent=intent,
        demographic=users.topic_affinity[user, topic].astype(np.float64),
        advertiser_engagement=engagement,
        ad_quality=cat.ad_quality[ad],
        user_bias=users.click_bias[user],
        hour_effect=cat.hour_effect[hour],
    )
    conversion = ConversionTerms(
        log_mix=np.log(cat.adv_mix[adv]),
        user_bias=users.conv_bias[user],
        advertiser_quality=cat.adv_quality[adv],
        interest=interest,
        intent=intent,
        advertiser_engagement=engagement,
        recent_atc=index.atc_advertiser.decayed_sum(user, adv, t, ATC_TAU, max_events=8),
        funnel=index.funnel(user, topic, t),
        age=users.age[user],
        home=(users.country[user] == cat.adv_home[adv]).astype(np.float64),
    )
    p_click = sigmoid(click_logit(click, config.signal_scale))
    q_conv = sigmoid(conversion_logits(conversion, config.signal_scale, config.conversion_scale))
    return p_click, q_conv, truth_terms(click, conversion)


def truth_terms(click: ClickTerms, conversion: ConversionTerms) -> dict[str, np.ndarray]:
    """The latent terms of one impression's true logits as ``truth_<logit>_<term>``
    columns (N each; the N x 3 advertiser mix split per conversion type)."""
    out = {f"truth_click_{k}": v for k, v in asdict(click).items()}
    for k, v in asdict(conversion).items():
        if k == "log_mix":
            out.update({f"truth_conv_log_mix_{c}": v[:, j] for j, c in enumerate(CONVERSION_TYPES)})
        else:
            out[f"truth_conv_{k}"] = v
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def draw_day(
    day: int,
    users: Users,
    interests: Interests,
    index: BehaviourIndex,
    snapshot: UserSnapshot,
    cat: Catalogue,
    config: WorldConfig,
    rng: np.random.Generator,
) -> DayImpressions:
    """Impressions of world day ``day`` (an index into ``interests``) for a chunk of users:
    Poisson(``impressions_per_day`` x activity share) per user at diurnal hours."""
    rate = config.impressions_per_day * users.activity / config.users
    user = np.repeat(np.arange(len(users)), rng.poisson(rate))
    hour = rng.choice(24, len(user), p=HOUR_PROBS)
    t = day * DAY + hour * 3600 + rng.integers(0, 3600, len(user))
    # Rows are grouped by user (np.repeat), so sort by time within each user: the look-up
    # codes are then nearly sorted, which keeps np.searchsorted cache-friendly.
    order = np.lexsort((t, user))
    user, hour, t = user[order], hour[order], t[order].astype(np.int64)

    ad = _select_ads(day, user, t, interests, index, cat, config, rng)
    p_click, q_conv, terms = _true_probabilities(
        day, user, t, hour, ad, users, interests, index, cat, config
    )
    click = rng.random(len(user)) < p_click
    converted = click[:, None] & (rng.random(q_conv.shape) < q_conv)
    labels = {"click": click.astype(np.int8)}
    oracle = {"click": p_click}
    for j, name in enumerate(CONVERSION_TYPES):
        labels[name] = converted[:, j].astype(np.int8)
        oracle[name] = p_click * q_conv[:, j]

    adv = cat.ad_adv[ad]
    columns: dict[str, np.ndarray] = {
        "hour": hour.astype(np.int64),
        "user_age": users.age[user].astype(np.float32),
        "user_gender": users.gender[user],
        "user_country": users.country[user],
        "user_age_bucket": users.age_bucket[user].astype(np.int64),
        "user_pred_interest": snapshot.predicted_interest[user],
        "user_emb": snapshot.embedding[user],
        **{n: c.astype(np.float32) for n, c in index.counts(user, t, adv).items()},
        "ad_id": ad,
        "advertiser_id": adv,
        "ad_topic": cat.ad_topic[ad],
        "ad_emb": cat.ad_emb[ad],
    }
    if config.truth_terms:
        columns.update(terms)
    return DayImpressions(user=user, t=t, columns=columns, labels=labels, oracle=oracle)
