"""The synthetic conversion-ads world (DESIGN section 8): a seeded, vectorised generator
that writes the section 2 format and records the truth.

Generative process (``history_days`` of behaviour, then ``days`` of logged impressions):

**Catalogue** (:mod:`.catalogue`). ``n_topics`` topics, each with a content embedding, an
age peak, gender and country affinities and a popularity. Advertisers have a main topic,
a *conversion-type mix* (Dirichlet over checkout / add_to_cart / signup), a conversion
quality and a home country; ads belong to advertisers (Zipf advertiser sizes) and mostly
share their topic; an ad's embedding is its topic's plus an advertiser offset. Organic
pins and search queries each belong to a topic.

**Users.** Age, gender, country; activity (lognormal; scales every behaviour rate and the
share of impressions); latent click and conversion propensities; a mean log-interest per
topic = demographic affinity (age x topic peak, gender x topic, country x topic) + topic
popularity + a personal taste.

**Latent interests** (:mod:`.behaviour`). Each day the log-interest moves as an AR(1)
around the user's mean (``interest_drift``); with probability ``episode_rate`` a short
*intent episode* (~2 days) adds +2.5 to one topic and raises activity. ``pi[u, day]`` =
softmax(log-interest).

**Behaviour = the five sequences**, all drawn from ``pi`` so they share one process:
``S_search`` (queries of a topic), ``S_org`` (pins of a topic; action click / save /
closeup / hide, more click/save the stronger the interest), ``S_ads`` (ads of a topic,
40% untargeted; same action model), ``S_match`` (conversions: after ad clicks with the
P(type | click) core of :mod:`.truth`, delayed minutes-hours; unattributed conversions at
advertisers of liked topics; add-to-carts followed by a checkout ~1 day later) and
``S_conv`` (the 70% of click-driven conversions attributed to the ad).

**Impressions** (:mod:`.impressions`). Each user-day has Poisson(``impressions_per_day``
x activity share) impressions at diurnal hours. The ad is targeted on the user's
*stale* interests (half), by topic popularity (half), and 20% are retargeted to the
advertiser of a recent conversion / ad click. Features: demographics; counting features
(``n_match_7d``, ``n_match_30d``, ``n_conv_7d``, ``n_conv_30d``, ``n_match_adv_30d`` at
the ad's advertiser, ``n_ads_click_7d``) = exact counts of sequence events in the window
before the impression; a weekly-refreshed pre-trained ``user_emb`` = interests
``embedding_staleness_days`` old projected onto the topic embeddings + noise, and
``user_pred_interest`` = a noisy argmax of the same stale interests; the ad's id,
advertiser, topic, embedding; the hour; the five sequences (items strictly before the
impression, oldest first, the last ``max_seq_len``). Logged impressions are a sample of
the traffic: their own clicks and conversions are not fed back into the behaviour logs.

**Truth** (:mod:`.truth`). ``P(click) = sigmoid(b + current interest in the ad's topic +
recency-weighted topic intent (exp. decay, tau 2 days, over searches, organic and ad
engagements) + demographic x topic + decayed engagement with the advertiser + ad quality +
user propensity + hour)``; ``P(type | click) = sigmoid(b_type + log mix[advertiser, type] +
user propensity + advertiser quality + interest + intent + advertiser engagement +
organic-then-ad-click funnel on the ad's topic within 3 days (a two-sequence effect) +
home country x advertiser + age x type + recent add-to-cart at this advertiser (tau 1
day; strong for checkout))``. Labels: ``click`` ~ P(click); each conversion type ~
P(type | click) on clicked impressions; ``oracle_<head>`` = the impression-level truth
(``P(click) * P(type | click)`` for conversions).

**Sampling** (paper 5.1). Every impression with a conversion is kept, the rest with
probability ``negative_rate``; ``sample_rate`` stores each row's inclusion probability.
``_world.json`` holds the config and per-day counts / oracle AUCs of the full population.
"""

from __future__ import annotations

from dhen_cvr.data.synth.config import CONVERSION_TYPES, HEADS, WorldConfig, world_spec
from dhen_cvr.data.synth.generate import WORLD_FILE, DayStats, WorldSummary, synthesize

__all__ = [
    "CONVERSION_TYPES",
    "HEADS",
    "WORLD_FILE",
    "DayStats",
    "WorldConfig",
    "WorldSummary",
    "synthesize",
    "world_spec",
]
