"""Configuration of the synthetic world and the feature spec of the columns it writes."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dhen_cvr.data.spec import FeatureSpec

__all__ = [
    "CONVERSION_TYPES",
    "ENGAGEMENT_ACTIONS",
    "HEADS",
    "SEQUENCE_NAMES",
    "WorldConfig",
    "world_spec",
]

HEADS: tuple[str, ...] = ("click", "checkout", "add_to_cart", "signup")
# Conversion types, in the order of the ``match_action`` / ``conv_action`` ids.
CONVERSION_TYPES: tuple[str, ...] = ("checkout", "add_to_cart", "signup")
# Onsite engagement actions, in the order of the ``org_action`` / ``ads_action`` ids.
ENGAGEMENT_ACTIONS: tuple[str, ...] = ("click", "save", "closeup", "hide")
SEQUENCE_NAMES: tuple[str, ...] = ("search", "org", "ads", "match", "conv")
AGE_BUCKET_EDGES: tuple[int, ...] = (25, 35, 45, 55, 65)  # 6 buckets


class WorldConfig(BaseModel):
    """Size, seed and difficulty of the synthetic conversion-ads world.

    Size: ``users``, ``days`` of logged impressions after ``history_days`` of behaviour
    only, ``impressions_per_day`` (expected count *before* down-sampling). Difficulty:
    ``signal_scale`` multiplies every non-bias term of the true logits (a logit
    temperature: lower = noisier labels, lower oracle AUC); ``conversion_scale``
    multiplies the conversion odds (label sparsity); ``interest_drift`` is the daily
    innovation share of the latent interests; ``episode_rate`` the daily chance of a
    short, intense intent episode (what only recent sequence items reveal);
    ``embedding_noise`` / ``embedding_staleness_days`` degrade the pre-trained user
    embedding. ``signal_scale`` also moves the base rates (the logits are not centred);
    pair it with ``conversion_scale`` to keep the sparsity you want.
    ``users_per_chunk`` bounds memory (users are simulated chunk by chunk, one part file
    per chunk and day); it is part of the seed: another chunking draws another world.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- size and seed ----
    days: int = Field(default=14, ge=1, le=3650)
    users: int = Field(default=2000, ge=10)
    impressions_per_day: int = Field(default=20000, ge=1)
    seed: int = Field(default=0, ge=0)
    max_seq_len: int = Field(default=50, ge=1)
    start_date: str = "2026-01-01"
    negative_rate: float = Field(default=0.05, gt=0, le=1)
    history_days: int = Field(default=30, ge=1)
    users_per_chunk: int = Field(default=20000, ge=1)
    # ---- catalogue ----
    n_topics: int = Field(default=24, ge=2)
    n_advertisers: int = Field(default=300, ge=2)
    n_ads: int = Field(default=3000, ge=2)
    n_pins: int = Field(default=20000, ge=2)
    n_queries: int = Field(default=2000, ge=2)
    n_countries: int = Field(default=20, ge=1)
    emb_dim: int = Field(default=16, ge=2)
    # ---- behaviour rates (events per user-day at average activity) ----
    search_per_day: float = Field(default=1.5, ge=0)
    org_per_day: float = Field(default=4.0, ge=0)
    ads_per_day: float = Field(default=1.5, ge=0)
    # ---- difficulty ----
    signal_scale: float = Field(default=1.0, ge=0)
    conversion_scale: float = Field(default=1.0, gt=0)
    interest_drift: float = Field(default=0.15, ge=0, le=1)
    episode_rate: float = Field(default=0.08, ge=0, le=1)
    embedding_noise: float = Field(default=0.5, ge=0)
    embedding_staleness_days: int = Field(default=14, ge=0)
    # ---- diagnostics ----
    # Also write each row's latent logit terms as truth_* columns (not in the spec): what a
    # model could know at best, e.g. to measure the gain of handing it one hidden term.
    truth_terms: bool = False
    # ---- what the sequences show ----
    # False: the organic and ad sequences carry no topic field (org_topic, ads_topic), only
    # the items' ids, as logs without item side information do; a model must learn what an
    # id is about from the sequences themselves. The data are the same otherwise.
    sequence_topics: bool = True

    @field_validator("start_date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"start_date must be YYYY-MM-DD, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _catalogue_fits(self) -> WorldConfig:
        if self.n_ads < self.n_advertisers:
            raise ValueError("n_ads must be >= n_advertisers (every advertiser has an ad)")
        for name in ("n_ads", "n_pins", "n_queries", "n_advertisers"):
            if getattr(self, name) < self.n_topics:
                raise ValueError(f"{name} must be >= n_topics (every topic needs one)")
        return self

    @property
    def day_names(self) -> list[str]:
        """``YYYY-MM-DD`` of every logged day."""
        start = dt.date.fromisoformat(self.start_date)
        return [(start + dt.timedelta(days=d)).isoformat() for d in range(self.days)]

    @property
    def start_unix(self) -> int:
        """Unix seconds of midnight UTC of the first logged day."""
        start = dt.datetime.fromisoformat(self.start_date).replace(tzinfo=dt.timezone.utc)
        return int(start.timestamp())


def world_spec(config: WorldConfig) -> FeatureSpec:
    """The feature spec of the columns :func:`synthesize` writes (no data needed).

    Id vocabularies come from the config, so every shared table (``item``, ``advertiser``,
    ``topic``, ``pin``, ``query``) maps ids identically wherever it appears.
    """
    c = config
    item = {"vocab_size": c.n_ads, "table": "item"}
    advertiser = {"vocab_size": c.n_advertisers, "table": "advertiser"}
    topic = {"vocab_size": c.n_topics, "table": "topic"}
    engagement = {"vocab_size": len(ENGAGEMENT_ACTIONS), "table": "engagement"}
    conv_type = {"vocab_size": len(CONVERSION_TYPES), "table": "conversion_type"}
    counts = ["n_match_7d", "n_match_30d", "n_conv_7d", "n_conv_30d", "n_match_adv_30d"]
    features: list[dict[str, object]] = [
        {"name": "user_age", "role": "dense", "category": "demographic"},
        *({"name": n, "role": "dense", "category": "counting", "log1p": True} for n in counts),
        {"name": "n_ads_click_7d", "role": "dense", "category": "counting", "log1p": True},
        {"name": "user_gender", "role": "categorical", "category": "demographic", "vocab_size": 3},
        {
            "name": "user_country",
            "role": "categorical",
            "category": "demographic",
            "vocab_size": c.n_countries,
        },
        {
            "name": "user_age_bucket",
            "role": "categorical",
            "category": "demographic",
            "vocab_size": len(AGE_BUCKET_EDGES) + 1,
        },
        {"name": "user_pred_interest", "role": "categorical", "category": "categorical", **topic},
        {"name": "user_emb", "role": "pretrained", "category": "pretrained", "dim": c.emb_dim},
        {"name": "ad_id", "role": "categorical", "category": "candidate", **item},
        {"name": "advertiser_id", "role": "categorical", "category": "candidate", **advertiser},
        {"name": "ad_topic", "role": "categorical", "category": "candidate", **topic},
        {"name": "ad_emb", "role": "pretrained", "category": "candidate", "dim": c.emb_dim},
        {"name": "hour", "role": "categorical", "category": "context", "vocab_size": 24},
    ]
    seq = {"role": "sequence", "category": "sequence", "max_len": c.max_seq_len}
    features += [
        {
            **seq,
            "name": "search",
            "timestamp": "search_ts",
            "fields": [{"name": "search_query", "vocab_size": c.n_queries, "table": "query"}],
        },
        {
            **seq,
            "name": "org",
            "timestamp": "org_ts",
            "fields": [
                {"name": "org_pin", "vocab_size": c.n_pins, "table": "pin"},
                *([{"name": "org_topic", **topic}] if c.sequence_topics else []),
                {"name": "org_action", **engagement},
            ],
        },
        {
            **seq,
            "name": "ads",
            "timestamp": "ads_ts",
            "fields": [
                {"name": "ads_item", **item},
                {"name": "ads_advertiser", **advertiser},
                *([{"name": "ads_topic", **topic}] if c.sequence_topics else []),
                {"name": "ads_action", **engagement},
            ],
        },
        {
            **seq,
            "name": "match",
            "timestamp": "match_ts",
            "fields": [
                {"name": "match_advertiser", **advertiser},
                {"name": "match_action", **conv_type},
            ],
        },
        {
            **seq,
            "name": "conv",
            "timestamp": "conv_ts",
            "fields": [
                {"name": "conv_item", **item},
                {"name": "conv_advertiser", **advertiser},
                {"name": "conv_action", **conv_type},
            ],
        },
    ]
    return FeatureSpec.from_dict(
        {
            "name": "synthetic-conversion-ads",
            "request_time": "ts",
            "user_id": "user_id",
            "features": features,
            "labels": [{"name": "click", "serve": False}] + [{"name": h} for h in CONVERSION_TYPES],
            "sampling": {
                "negative_rate": c.negative_rate,
                "inclusion_column": "sample_rate",
                "keep_labels": list(CONVERSION_TYPES),
            },
            "oracle_prefix": "oracle_",
        },
        source="world_spec",
    )
