"""The true logits of the world: P(click) and P(conversion of type c | click).

Shared by the background behaviour (ad clicks in the history convert with the same
user / advertiser / interest terms) and the logged impressions, whose logits add the
sequence-derived terms (recency-weighted intent, advertiser engagement, a recent
add-to-cart at the advertiser, the organic -> ad-click funnel). ``scale`` is
:attr:`WorldConfig.signal_scale`: it multiplies every non-bias term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhen_cvr.data.synth.config import CONVERSION_TYPES

__all__ = ["ClickTerms", "ConversionTerms", "click_logit", "conversion_logits", "sigmoid"]

CLICK_BIAS = -4.9
# Per conversion type (checkout, add_to_cart, signup), conditional on a click.
CONVERSION_BIAS = np.array([-2.6, -2.5, -2.7])
# Effect of (age - 40) / 15 per type: older users check out, younger ones sign up.
CONVERSION_AGE = np.array([0.3, 0.0, -0.4])
# A recent add-to-cart at the candidate's advertiser (decayed count, tau = 1 day).
CONVERSION_RECENT_ATC = np.array([1.5, 0.3, 0.0])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class ClickTerms:
    """Per-impression drivers of the click logit (arrays of one length).

    ``interest``: clipped ``log(K * pi_k)`` of the user's *current* latent interest in
    the ad's topic; ``intent``: ``log1p`` of the recency-weighted count of the user's
    search / organic / ad engagements with the ad's topic; ``demographic``: the user's
    demographic affinity to the topic (age peak x topic, gender x topic, country x topic);
    ``advertiser_engagement``: ``log1p`` decayed ad engagements with the advertiser.
    """

    interest: np.ndarray
    intent: np.ndarray
    demographic: np.ndarray
    advertiser_engagement: np.ndarray
    ad_quality: np.ndarray
    user_bias: np.ndarray
    hour_effect: np.ndarray


def click_logit(t: ClickTerms, scale: float) -> np.ndarray:
    signal = (
        0.2 * t.interest
        + 0.25 * t.intent
        + 0.2 * t.demographic
        + 0.3 * t.advertiser_engagement
        + t.ad_quality
        + t.user_bias
        + t.hour_effect
    )
    return CLICK_BIAS + scale * signal


@dataclass
class ConversionTerms:
    """Per-impression drivers of P(conversion | click), one value per row.

    ``log_mix`` is N x 3 (the advertiser's conversion-type mix); ``recent_atc`` the
    decayed count of the user's add-to-carts at this advertiser; ``funnel`` is 1 when an
    organic engagement with the ad's topic was followed by an ad click on that topic
    (both within 3 days); ``home`` is 1 when the user lives in the advertiser's home
    country (a demographic x advertiser cross).
    """

    log_mix: np.ndarray
    user_bias: np.ndarray
    advertiser_quality: np.ndarray
    interest: np.ndarray
    intent: np.ndarray
    advertiser_engagement: np.ndarray
    recent_atc: np.ndarray
    funnel: np.ndarray
    age: np.ndarray
    home: np.ndarray


def conversion_logits(t: ConversionTerms, scale: float, conversion_scale: float) -> np.ndarray:
    """N x 3 logits of P(type | click) in :data:`CONVERSION_TYPES` order."""
    shared = (
        t.user_bias
        + t.advertiser_quality
        + 0.1 * t.interest
        + 0.15 * t.intent
        + 0.3 * t.advertiser_engagement
        + 0.7 * t.funnel
        + 0.4 * t.home
    )
    typed = (
        CONVERSION_AGE[None, :] * ((t.age[:, None] - 40.0) / 15.0)
        + CONVERSION_RECENT_ATC[None, :] * t.recent_atc[:, None]
    )
    bias = CONVERSION_BIAS[None, :] + np.log(conversion_scale) + t.log_mix
    return bias + scale * (shared[:, None] + typed)


assert len(CONVERSION_BIAS) == len(CONVERSION_TYPES)
