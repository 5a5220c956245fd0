"""The latent process and the behaviour it emits: drifting interests and five event logs.

For a chunk of users and every day of the world (history days, then logged days):

1. *Interests*: ``z[u, g] = mean_u + x[u, g]`` with ``x`` an AR(1) random walk
   (``interest_drift`` = 1 - its daily autocorrelation), plus short intent *episodes*
   (start with probability ``episode_rate`` per day, last ~2 days, add +2.5 to one topic's
   log-interest). ``pi[u, g] = softmax(z[u, g])`` is the day's interest distribution.
2. *Behaviour* drawn from ``pi`` (so all five sequences share one latent process):
   searches (a query of the topic), organic engagements (a pin of the topic, 15% off-
   interest exploration, action click / save / closeup / hide by interest strength), ad
   engagements (an ad of the topic, 40% untargeted, same action model), conversions after
   ad clicks (P(type | click) from :mod:`~dhen_cvr.data.synth.truth`, delayed minutes to
   hours, in ``S_match``; attributed to the ad in ``S_conv`` with probability 0.7),
   unattributed conversions at advertisers of liked topics (``S_match`` only), and
   add-to-carts that lead to a checkout at the same advertiser ~1 day later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhen_cvr.data.synth.catalogue import HOUR_PROBS, Catalogue, Users
from dhen_cvr.data.synth.config import WorldConfig
from dhen_cvr.data.synth.truth import ConversionTerms, conversion_logits, sigmoid

__all__ = [
    "DAY",
    "Behaviour",
    "EventLog",
    "Interests",
    "interest_strength",
    "simulate_behaviour",
    "simulate_interests",
]

DAY = 86_400
EPISODE_BOOST = 2.5
ATTRIBUTION_RATE = 0.7
FOLLOW_UP_CHECKOUT = 0.3
UNATTRIBUTED_PER_DAY = 0.03
CLICK, SAVE, CLOSEUP, HIDE = 0, 1, 2, 3
CHECKOUT, ADD_TO_CART, SIGNUP = 0, 1, 2


@dataclass(frozen=True)
class Interests:
    """``log_interest``: U x G x K (float32, episodes included); ``episode``: U x G topic
    of the active intent episode (-1 = none)."""

    log_interest: np.ndarray
    episode: np.ndarray

    @property
    def n_days(self) -> int:
        return int(self.log_interest.shape[1])

    def probs(self, day: int | None = None) -> np.ndarray:
        """Softmax of the log-interest: U x G x K, or U x K of one ``day``."""
        z = self.log_interest if day is None else self.log_interest[:, day]
        return _softmax(z.astype(np.float64))


def simulate_interests(
    users: Users, n_days: int, config: WorldConfig, rng: np.random.Generator
) -> Interests:
    n, k = users.interest_mean.shape
    rho = 1.0 - config.interest_drift
    innovation = np.sqrt(1.0 - rho**2)
    x = rng.normal(0.0, 1.0, (n, k))
    z = np.empty((n, n_days, k), dtype=np.float32)
    episode = np.full((n, n_days), -1, dtype=np.int64)
    ep_topic = np.full(n, -1, dtype=np.int64)
    ep_left = np.zeros(n, dtype=np.int64)
    for g in range(n_days):
        x = rho * x + innovation * rng.normal(0.0, 1.0, (n, k))
        day_z = users.interest_mean + x
        start = (ep_left == 0) & (rng.random(n) < config.episode_rate)
        if start.any():
            ep_topic[start] = _sample_categorical(_softmax(day_z[start]), rng)
            ep_left[start] = 1 + rng.geometric(0.5, int(start.sum()))
        active = ep_left > 0
        day_z[active, ep_topic[active]] += EPISODE_BOOST
        episode[active, g] = ep_topic[active]
        ep_left[active] -= 1
        z[:, g] = day_z
    return Interests(log_interest=z, episode=episode)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _sample_categorical(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of ``probs`` (N x K, rows need not be normalised)."""
    return _sample_from_cdf(np.cumsum(probs, axis=-1), np.arange(len(probs)), rng)


def _sample_from_cdf(
    cdf: np.ndarray, rows: np.ndarray, rng: np.random.Generator, block: int = 1 << 16
) -> np.ndarray:
    """One index per entry of ``rows``, drawn from row ``cdf[rows[i]]`` (cumulative, M x K)
    by inverse CDF, in memory-bounded blocks."""
    out = np.empty(len(rows), dtype=np.int64)
    r = rng.random(len(rows))
    for lo in range(0, len(rows), block):
        c = cdf[rows[lo : lo + block]]
        out[lo : lo + block] = (c < r[lo : lo + block, None] * c[:, -1:]).sum(axis=1)
    return np.minimum(out, cdf.shape[-1] - 1)


def interest_strength(p: np.ndarray, n_topics: int) -> np.ndarray:
    """``clip(log(K * p), -3, 3)`` of a topic's interest share ``p``: 0 = average interest."""
    return np.clip(np.log(np.maximum(p * n_topics, 1e-12)), -3.0, 3.0)


@dataclass
class EventLog:
    """Events of one sequence for a chunk of users: local ``user``, ``t`` (seconds since
    the world's origin) and one array per item field, sorted by ``(user, t)``."""

    user: np.ndarray
    t: np.ndarray
    fields: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.t)

    def sorted(self, span: int) -> EventLog:
        keep = self.t < span
        order = np.lexsort((self.t[keep], self.user[keep]))
        return EventLog(
            user=self.user[keep][order],
            t=self.t[keep][order],
            fields={k: v[keep][order] for k, v in self.fields.items()},
        )

    def where(self, mask: np.ndarray) -> EventLog:
        return EventLog(self.user[mask], self.t[mask], {k: v[mask] for k, v in self.fields.items()})

    @staticmethod
    def concat(logs: list[EventLog]) -> EventLog:
        return EventLog(
            user=np.concatenate([g.user for g in logs]),
            t=np.concatenate([g.t for g in logs]),
            fields={k: np.concatenate([g.fields[k] for g in logs]) for k in logs[0].fields},
        )


@dataclass
class Behaviour:
    """The five behaviour sequences of a chunk of users, each sorted by ``(user, t)``.

    Field names are the Parquet column names (``org_pin``, ``match_action``, ...);
    Fields not in the spec are never written: ``search_topic`` (the query's topic),
    ``ads_interest`` (latent interest strength at the time) and ``match_item`` (the
    clicked ad behind a conversion, -1 if unattributed).
    """

    search: EventLog
    org: EventLog
    ads: EventLog
    match: EventLog
    conv: EventLog

    def logs(self) -> dict[str, EventLog]:
        return {
            "search": self.search,
            "org": self.org,
            "ads": self.ads,
            "match": self.match,
            "conv": self.conv,
        }


def _event_slots(
    rate: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson counts per (user, day) of ``rate`` (U x G) -> (user, day, t) per event."""
    n_days = rate.shape[1]
    counts = rng.poisson(rate).ravel()
    cell = np.repeat(np.arange(counts.size), counts)
    user, day = cell // n_days, cell % n_days
    hour = rng.choice(24, len(cell), p=HOUR_PROBS)
    t = day * DAY + hour * 3600 + rng.integers(0, 3600, len(cell))
    return user, day, t.astype(np.int64)


def _engagement_action(strength: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """click / save / closeup / hide, by Gumbel-max; stronger interest -> click, save."""
    s = strength[:, None]
    logits = np.concatenate([0.2 + 0.8 * s, -0.8 + 0.5 * s, 0.3 + 0.0 * s, -1.2 - 0.8 * s], axis=1)
    return np.asarray((logits + rng.gumbel(size=logits.shape)).argmax(axis=1), dtype=np.int64)


@dataclass(frozen=True)
class _DailyInterests:
    """A chunk's per (user, day) topic distribution, flattened to ``(U * G) x K`` rows, and
    its behaviour rate multiplier (activity, x1.5 on episode days)."""

    probs: np.ndarray
    cdf: np.ndarray
    n_days: int
    rate: np.ndarray  # U x G

    @classmethod
    def of(cls, users: Users, interests: Interests) -> _DailyInterests:
        n_users, n_days, k = interests.log_interest.shape
        probs = interests.probs().reshape(n_users * n_days, k)
        in_episode = (interests.episode >= 0).astype(np.float64)
        rate = users.activity[:, None] * (1.0 + 0.5 * in_episode)
        return cls(probs, np.cumsum(probs, axis=1), n_days, rate)

    def slots(
        self, per_day: float | np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, day, t) of Poisson(``per_day`` x rate) events per user-day."""
        per_user = np.asarray(per_day, dtype=np.float64).reshape(-1, 1)
        return _event_slots(per_user * self.rate, rng)

    def topics(
        self, user: np.ndarray, day: np.ndarray, explore: float, rng: np.random.Generator
    ) -> np.ndarray:
        """A topic per event from the day's interests; ``explore`` of them uniform."""
        topic = _sample_from_cdf(self.cdf, user * self.n_days + day, rng)
        k = self.probs.shape[1]
        return np.where(rng.random(len(topic)) < explore, rng.integers(0, k, len(topic)), topic)

    def strength(self, user: np.ndarray, day: np.ndarray, topic: np.ndarray) -> np.ndarray:
        return interest_strength(self.probs[user * self.n_days + day, topic], self.probs.shape[1])


def _onsite_logs(
    daily: _DailyInterests, cat: Catalogue, config: WorldConfig, rng: np.random.Generator
) -> tuple[EventLog, EventLog, EventLog]:
    """S_search, S_org and S_ads (unsorted)."""
    user, day, t = daily.slots(config.search_per_day, rng)
    topic = daily.topics(user, day, 0.05, rng)
    search = EventLog(
        user, t, {"search_query": cat.queries_by_topic.draw(topic, rng), "search_topic": topic}
    )
    user, day, t = daily.slots(config.org_per_day, rng)
    topic = daily.topics(user, day, 0.15, rng)
    org = EventLog(
        user,
        t,
        {
            "org_pin": cat.pins_by_topic.draw(topic, rng),
            "org_topic": topic,
            "org_action": _engagement_action(daily.strength(user, day, topic), rng),
        },
    )
    user, day, t = daily.slots(config.ads_per_day, rng)
    topic = daily.topics(user, day, 0.4, rng)
    item = cat.ads_by_topic.draw(topic, rng)
    strength = daily.strength(user, day, topic)
    ads = EventLog(
        user,
        t,
        {
            "ads_item": item,
            "ads_advertiser": cat.ad_adv[item],
            "ads_topic": cat.ad_topic[item],
            "ads_action": _engagement_action(strength, rng),
            "ads_interest": strength,
        },
    )
    return search, org, ads


def _conversion_logs(
    ads: EventLog,
    daily: _DailyInterests,
    users: Users,
    cat: Catalogue,
    config: WorldConfig,
    rng: np.random.Generator,
) -> tuple[EventLog, EventLog]:
    """S_match and S_conv (unsorted): click-driven, unattributed and follow-up conversions."""
    # Conversions after ad clicks (same P(type | click) core as the impressions).
    clicked = ads.where(ads.fields["ads_action"] == CLICK)
    cu, adv, item = clicked.user, clicked.fields["ads_advertiser"], clicked.fields["ads_item"]
    zeros = np.zeros(len(cu))
    logits = conversion_logits(
        ConversionTerms(
            log_mix=np.log(cat.adv_mix[adv]),
            user_bias=users.conv_bias[cu],
            advertiser_quality=cat.adv_quality[adv],
            interest=clicked.fields["ads_interest"],
            intent=zeros,
            advertiser_engagement=zeros,
            recent_atc=zeros,
            funnel=zeros,
            age=users.age[cu],
            home=(users.country[cu] == cat.adv_home[adv]).astype(np.float64),
        ),
        config.signal_scale,
        config.conversion_scale,
    )
    row, ctype = np.nonzero(rng.random(logits.shape) < sigmoid(logits))
    delay = rng.exponential(np.where(ctype == SIGNUP, 1800.0, 7200.0))
    attributed = EventLog(
        cu[row],
        clicked.t[row] + 1 + delay.astype(np.int64),
        {"match_advertiser": adv[row], "match_action": ctype, "match_item": item[row]},
    )

    # Unattributed conversions at advertisers of liked topics.
    rate = UNATTRIBUTED_PER_DAY * config.conversion_scale * np.exp(users.conv_bias)
    user, day, t = daily.slots(rate, rng)
    adv = cat.advertisers_by_topic.draw(daily.topics(user, day, 0.1, rng), rng)
    organic = EventLog(
        user,
        t,
        {
            "match_advertiser": adv,
            "match_action": _sample_categorical(cat.adv_mix[adv], rng),
            "match_item": np.full_like(adv, -1),
        },
    )

    # Add-to-carts turn into checkouts at the same advertiser about a day later.
    atc = EventLog.concat([attributed, organic])
    atc = atc.where(
        (atc.fields["match_action"] == ADD_TO_CART) & (rng.random(len(atc)) < FOLLOW_UP_CHECKOUT)
    )
    follow = EventLog(
        atc.user,
        atc.t + 600 + rng.exponential(DAY, len(atc)).astype(np.int64),
        {
            "match_advertiser": atc.fields["match_advertiser"],
            "match_action": np.full(len(atc), CHECKOUT, dtype=np.int64),
            "match_item": np.full(len(atc), -1, dtype=np.int64),
        },
    )
    match = EventLog.concat([attributed, organic, follow])
    is_conv = (match.fields["match_item"] >= 0) & (rng.random(len(match)) < ATTRIBUTION_RATE)
    chosen = match.where(is_conv)
    conv = EventLog(
        chosen.user,
        chosen.t,
        {
            "conv_item": chosen.fields["match_item"],
            "conv_advertiser": chosen.fields["match_advertiser"],
            "conv_action": chosen.fields["match_action"],
        },
    )
    return match, conv


def simulate_behaviour(
    users: Users,
    interests: Interests,
    cat: Catalogue,
    config: WorldConfig,
    rng: np.random.Generator,
) -> Behaviour:
    """The five sequences of a chunk of users over every day of ``interests``."""
    span = interests.n_days * DAY
    daily = _DailyInterests.of(users, interests)
    search, org, ads = _onsite_logs(daily, cat, config, rng)
    match, conv = _conversion_logs(ads, daily, users, cat, config, rng)
    return Behaviour(
        search=search.sorted(span),
        org=org.sorted(span),
        ads=ads.sorted(span),
        match=match.sorted(span),
        conv=conv.sorted(span),
    )
