"""The HTTP request and response bodies, built from the served feature spec (pydantic, so
the OpenAPI schema names every feature and a 422 names the offending field)::

    POST /v1/score
    {"request_time": 1767312000,                        # unix seconds (default: now)
     "user": {"features": {"user_age": 31.0, "user_gender": 1, "hour": 14, ...},
              "sequences": {"org": {"timestamps": [...], "org_pin": [...], ...}, ...}},
     "candidates": [{"ad_id": 17, "advertiser_id": 3, "ad_topic": 5, "ad_emb": [...]}, ...]}

Features of the ``candidate`` category go on each candidate; every other non-sequence
feature goes in ``user.features`` (one value for the whole request) or on each candidate
(a per-candidate value, e.g. a user x ad count). Ids are ints or strings, sent with the
type of the training data's column (a hashed id hashes an int and its string
differently). Sequences are parallel lists, oldest item first, timestamps ascending and
before ``request_time``; a missing sequence is empty, a longer one is cut to the model's
newest items (not refused).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)

from dhen_cvr.data.spec import (
    CategoricalFeature,
    DenseFeature,
    FeatureCategory,
    FeatureSpec,
    PretrainedFeature,
    SequenceFeature,
)

__all__ = ["RequestSchema", "ScoreResponse"]

Number = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)]
RawId = StrictInt | StrictStr


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class ScoreResponse(BaseModel):
    """``scores[i][head]``: calibrated pCVR of candidate ``i`` (request order)."""

    model_version: str
    request_time: int
    heads: list[str]
    scores: list[dict[str, float]]


def _feature_type(f: DenseFeature | PretrainedFeature | CategoricalFeature) -> Any:
    if isinstance(f, DenseFeature):
        return Number
    if isinstance(f, PretrainedFeature):
        return Annotated[list[Number], Field(min_length=f.dim, max_length=f.dim)]
    return RawId


def _features_model(name: str, spec: FeatureSpec, doc: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for i, f in enumerate(spec.features):
        if isinstance(f, SequenceFeature):
            continue
        what = f"{f.role} feature ({f.category.value})"
        fields[f"f{i}"] = (
            _feature_type(f) | None,
            Field(default=None, alias=f.name, description=what),
        )
    return create_model(name, __base__=_Body, __doc__=doc, **fields)


def _sequence_model(seq: SequenceFeature) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "timestamps": (list[StrictInt], Field(default_factory=list, description="unix seconds"))
    }
    for i, fld in enumerate(seq.fields):
        fields[f"f{i}"] = (list[RawId], Field(default_factory=list, alias=fld.name))
    doc = f"Sequence {seq.name!r}: parallel lists, oldest item first (cut to {seq.max_len})."
    return create_model(f"Sequence_{seq.name}", __base__=_Body, __doc__=doc, **fields)


class RequestSchema:
    """The request model of one served spec and what it checks beyond types.

    ``model``: the pydantic class of the body; ``dump(body)`` -> plain dicts keyed by
    feature name (``{"request_time", "user": {"features", "sequences"}, "candidates"}``).
    """

    def __init__(self, spec: FeatureSpec, max_candidates: int) -> None:
        self.spec = spec
        self.max_candidates = max_candidates
        self.candidate_features = [
            f.name
            for f in spec.features
            if not isinstance(f, SequenceFeature) and f.category == FeatureCategory.candidate
        ]
        self.request_features = [
            f.name
            for f in spec.features
            if not isinstance(f, SequenceFeature) and f.category != FeatureCategory.candidate
        ]
        sequences: dict[str, Any] = {
            f"s{i}": (_sequence_model(s) | None, Field(default=None, alias=s.name))
            for i, s in enumerate(spec.sequences)
        }
        seqs_model = create_model("Sequences", __base__=_Body, **sequences)
        user_features = _features_model(
            "UserFeatures", spec, "Request-level feature values (shared by every candidate)."
        )
        user = create_model(
            "User",
            __base__=_Body,
            features=(user_features, Field(default_factory=user_features)),
            sequences=(seqs_model, Field(default_factory=seqs_model)),
        )
        candidate = _features_model(
            "Candidate", spec, "One candidate ad: its features (and any per-candidate value)."
        )
        check = self._check

        class ScoreRequest(_Body):
            """One user against up to ``max_candidates`` candidate ads."""

            request_time: StrictInt | None = Field(
                default=None, ge=0, description="unix seconds of the request (default: now)"
            )
            user: user  # type: ignore[valid-type]
            candidates: list[candidate] = Field(  # type: ignore[valid-type]
                min_length=1, max_length=max_candidates
            )
            _plain: dict[str, Any] | None = PrivateAttr(default=None)

            @model_validator(mode="after")
            def _consistent(self) -> ScoreRequest:
                if self.request_time is None:
                    self.request_time = int(time.time())
                self._plain = check(self)
                return self

        self.model: type[BaseModel] = ScoreRequest

    def dump(self, body: BaseModel) -> dict[str, Any]:
        """The validated body as plain values keyed by feature names."""
        plain = getattr(body, "_plain", None)
        if plain is not None:
            return plain
        data = body.model_dump(by_alias=True)
        data["user"]["sequences"] = {
            k: v for k, v in data["user"]["sequences"].items() if v is not None
        }
        return data

    def _check(self, body: Any) -> dict[str, Any]:
        """Presence of every feature, sequence list lengths and timestamp order; returns
        the plain body (:meth:`dump`)."""
        data = self.dump(body)
        user = data["user"]["features"]
        candidates = data["candidates"]
        for name in self.candidate_features:
            for i, c in enumerate(candidates):
                if c.get(name) is None:
                    raise ValueError(f"candidates[{i}].{name}: missing (a candidate feature)")
        for name in self.request_features:
            if user.get(name) is not None:
                continue
            for i, c in enumerate(candidates):
                if c.get(name) is None:
                    raise ValueError(
                        f"user.features.{name}: missing (give it here or on every candidate; "
                        f"candidates[{i}] has none)"
                    )
        for name, ids in self._id_types(user, candidates).items():
            if len(ids) > 1:
                raise ValueError(f"{name}: mixes int and string ids; use one type")
        request_time = data["request_time"]
        for seq in self.spec.sequences:
            items = data["user"]["sequences"].get(seq.name)
            if items is None:
                continue
            where = f"user.sequences.{seq.name}"
            ts = items["timestamps"]
            for fld in seq.fields:
                values = items[fld.name]
                if len(values) != len(ts):
                    raise ValueError(
                        f"{where}.{fld.name}: {len(values)} items but timestamps has {len(ts)}"
                    )
                if len({type(v) for v in values}) > 1:
                    raise ValueError(f"{where}.{fld.name}: mixes int and string ids")
            for k, t in enumerate(ts):
                if t < 0:
                    raise ValueError(f"{where}.timestamps[{k}]: negative timestamp {t}")
                if k and t < ts[k - 1]:
                    raise ValueError(
                        f"{where}.timestamps[{k}]: {t} is before the previous item's {ts[k - 1]} "
                        "(oldest first, ascending)"
                    )
            if ts and ts[-1] >= request_time:
                k = next(k for k, t in enumerate(ts) if t >= request_time)
                raise ValueError(
                    f"{where}.timestamps[{k}]: {ts[k]} is at or after the request time "
                    f"{request_time}"
                )
        return data

    def _id_types(self, user: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, set]:
        out: dict[str, set] = {}
        for f in self.spec.categorical:
            values = [c[f.name] for c in candidates if c.get(f.name) is not None]
            if user.get(f.name) is not None:
                values.append(user[f.name])
            out[f"candidates[*].{f.name}"] = {type(v) for v in values}
        return out
