"""The static part of the world: topics, advertisers, ads, pins, queries and users.

Everything here is drawn once from the world seed; the time-varying part (interests,
behaviour, impressions) lives in :mod:`dhen_cvr.data.synth.behaviour` and
:mod:`dhen_cvr.data.synth.impressions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhen_cvr.data.synth.config import AGE_BUCKET_EDGES, CONVERSION_TYPES, WorldConfig

__all__ = [
    "Catalogue",
    "Grouped",
    "Users",
    "build_catalogue",
    "build_users",
    "demographic_affinity",
]

# Hour-of-day traffic shape (UTC, evening peak); impressions and behaviour share it.
HOUR_WEIGHTS = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 5, 6, 6, 5, 5, 6, 7, 8, 9, 9, 8, 6, 4], dtype=np.float64
)
HOUR_PROBS = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()


@dataclass(frozen=True)
class Grouped:
    """Members (ads, pins, queries) grouped by a label (topic, advertiser), for "draw a
    member of group k". ``members[offsets[k]:offsets[k + 1]]`` are group ``k``'s ids,
    most popular first."""

    members: np.ndarray
    offsets: np.ndarray

    @classmethod
    def by_label(cls, label_of: np.ndarray, n_labels: int) -> Grouped:
        order = np.argsort(label_of, kind="stable")
        counts = np.bincount(label_of, minlength=n_labels)
        return cls(order.astype(np.int64), np.concatenate([[0], np.cumsum(counts)]))

    def draw(self, labels: np.ndarray, rng: np.random.Generator, skew: float = 2.0) -> np.ndarray:
        """One member of each given group; popularity ~ power law (``u ** skew``)."""
        start = self.offsets[labels]
        size = self.offsets[labels + 1] - start
        pick = np.minimum((rng.random(len(labels)) ** skew * size).astype(np.int64), size - 1)
        return self.members[start + pick]


@dataclass(frozen=True)
class Catalogue:
    """Topics, advertisers, ads, pins and queries.

    Topics: ``topic_emb`` (K x E content embedding), ``topic_age_peak`` (K, the age whose
    users like the topic most), ``topic_gender`` (3 x K), ``topic_country`` (C x K),
    ``topic_pop`` (K). Advertisers: ``adv_topic``, ``adv_mix`` (V x 3 conversion-type mix
    over checkout / add_to_cart / signup), ``adv_quality`` (conversion), ``adv_home``
    (home country). Ads: ``ad_adv``, ``ad_topic``, ``ad_quality`` (click), ``ad_emb``.
    """

    topic_emb: np.ndarray
    topic_age_peak: np.ndarray
    topic_gender: np.ndarray
    topic_country: np.ndarray
    topic_pop: np.ndarray
    adv_topic: np.ndarray
    adv_mix: np.ndarray
    adv_quality: np.ndarray
    adv_home: np.ndarray
    ad_adv: np.ndarray
    ad_topic: np.ndarray
    ad_quality: np.ndarray
    ad_emb: np.ndarray
    ads_by_topic: Grouped
    pins_by_topic: Grouped
    queries_by_topic: Grouped
    advertisers_by_topic: Grouped
    ads_by_advertiser: Grouped
    country_probs: np.ndarray
    hour_effect: np.ndarray

    @property
    def n_topics(self) -> int:
        return len(self.topic_pop)


def _cover_then_random(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels in ``[0, k)`` such that every label occurs (first k are 0..k-1)."""
    return np.concatenate([np.arange(k), rng.integers(0, k, n - k)]).astype(np.int64)


def build_catalogue(config: WorldConfig, rng: np.random.Generator) -> Catalogue:
    c = config
    k, e = c.n_topics, c.emb_dim
    topic_emb = rng.normal(0.0, 1.0 / np.sqrt(e), (k, e))
    adv_topic = _cover_then_random(c.n_advertisers, k, rng)
    adv_mix = rng.dirichlet(np.full(len(CONVERSION_TYPES), 6.0), c.n_advertisers)
    adv_mix = np.clip(adv_mix, 1e-3, None)
    adv_mix /= adv_mix.sum(1, keepdims=True)
    adv_offset = rng.normal(0.0, 1.0 / np.sqrt(e), (c.n_advertisers, e))
    # Advertisers differ in size: the first ad of each, the rest Zipf-distributed.
    size = 1.0 / np.arange(1, c.n_advertisers + 1) ** 0.8
    extra = rng.choice(c.n_advertisers, c.n_ads - c.n_advertisers, p=size / size.sum())
    ad_adv = np.concatenate([rng.permutation(c.n_advertisers), extra]).astype(np.int64)
    off_topic = rng.random(c.n_ads) < 0.15
    ad_topic = np.where(off_topic, rng.integers(0, k, c.n_ads), adv_topic[ad_adv])
    ad_topic[:k] = np.arange(k)  # every topic has at least one ad
    ad_emb = (
        topic_emb[ad_topic]
        + 0.5 * adv_offset[ad_adv]
        + rng.normal(0, 0.2 / np.sqrt(e), (c.n_ads, e))
    )
    pin_topic = _cover_then_random(c.n_pins, k, rng)
    query_topic = _cover_then_random(c.n_queries, k, rng)
    country_w = 1.0 / np.arange(1, c.n_countries + 1) ** 1.1
    hour_effect = 0.25 * np.sin(2 * np.pi * (np.arange(24) - 14) / 24)
    return Catalogue(
        topic_emb=topic_emb,
        topic_age_peak=rng.uniform(20, 65, k),
        topic_gender=rng.normal(0, 0.6, (3, k)),
        topic_country=rng.normal(0, 0.4, (c.n_countries, k)),
        topic_pop=rng.normal(0, 0.5, k),
        adv_topic=adv_topic,
        adv_mix=adv_mix,
        adv_quality=rng.normal(0, 0.25, c.n_advertisers),
        adv_home=rng.choice(c.n_countries, c.n_advertisers, p=country_w / country_w.sum()),
        ad_adv=ad_adv,
        ad_topic=ad_topic.astype(np.int64),
        ad_quality=rng.normal(0, 0.3, c.n_ads),
        ad_emb=ad_emb.astype(np.float32),
        ads_by_topic=Grouped.by_label(ad_topic, k),
        pins_by_topic=Grouped.by_label(pin_topic, k),
        queries_by_topic=Grouped.by_label(query_topic, k),
        advertisers_by_topic=Grouped.by_label(adv_topic, k),
        ads_by_advertiser=Grouped.by_label(ad_adv, c.n_advertisers),
        country_probs=country_w / country_w.sum(),
        hour_effect=hour_effect,
    )


@dataclass(frozen=True)
class Users:
    """Static user attributes (N users): demographics and latent propensities.

    ``activity`` (mean 1) scales every behaviour rate and the share of impressions;
    ``click_bias`` / ``conv_bias`` are latent per-user click / conversion propensities;
    ``topic_affinity`` (N x K) is :func:`demographic_affinity`; ``interest_mean`` (N x K)
    the centre the drifting interests revert to.
    """

    age: np.ndarray
    gender: np.ndarray
    country: np.ndarray
    activity: np.ndarray
    click_bias: np.ndarray
    conv_bias: np.ndarray
    topic_affinity: np.ndarray
    interest_mean: np.ndarray

    def __len__(self) -> int:
        return len(self.age)

    @property
    def age_bucket(self) -> np.ndarray:
        return np.searchsorted(np.asarray(AGE_BUCKET_EDGES), self.age, side="right")

    def slice(self, lo: int, hi: int) -> Users:
        return Users(**{name: getattr(self, name)[lo:hi] for name in self.__dataclass_fields__})


def demographic_affinity(
    cat: Catalogue, age: np.ndarray, gender: np.ndarray, country: np.ndarray
) -> np.ndarray:
    """N x K demographic-by-topic affinity (age peak per topic, gender and country shifts),
    centred per user so it is a pure demographic x topic cross."""
    age_term = -0.8 * ((age[:, None] - cat.topic_age_peak[None, :]) / 15.0) ** 2
    aff = age_term + cat.topic_gender[gender] + cat.topic_country[country]
    return np.asarray(aff - aff.mean(axis=1, keepdims=True))


def build_users(config: WorldConfig, cat: Catalogue, rng: np.random.Generator) -> Users:
    n = config.users
    age = np.clip(np.round(rng.normal(38, 12, n)), 18, 80)
    gender = rng.choice(3, n, p=[0.48, 0.48, 0.04])
    country = rng.choice(config.n_countries, n, p=cat.country_probs)
    activity = rng.lognormal(0.0, 0.6, n)
    activity /= activity.mean()
    dem = demographic_affinity(cat, age, gender, country)
    interest_mean = dem + cat.topic_pop[None, :] + rng.normal(0, 1.2, (n, config.n_topics))
    return Users(
        age=age,
        gender=gender.astype(np.int64),
        country=country.astype(np.int64),
        activity=activity,
        click_bias=rng.normal(0, 0.35, n),
        conv_bias=rng.normal(0, 0.6, n),
        topic_affinity=dem.astype(np.float32),
        interest_mean=interest_mean.astype(np.float32),
    )
