"""Feature spec validation: good specs load, bad ones name the offending entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dhen_cvr.data.spec import FeatureSpec, SpecError, load_spec


def _spec_dict() -> dict[str, Any]:
    return {
        "request_time": "ts",
        "user_id": "user_id",
        "features": [
            {"name": "age", "role": "dense", "category": "demographic"},
            {"name": "n_conv", "role": "dense", "category": "counting", "log1p": True},
            {"name": "gender", "role": "categorical", "category": "demographic", "vocab_size": 3},
            {"name": "emb", "role": "pretrained", "category": "pretrained", "dim": 4},
            {
                "name": "ad_id",
                "role": "categorical",
                "category": "candidate",
                "hash_buckets": 100,
                "table": "item",
            },
            {
                "name": "ads",
                "role": "sequence",
                "max_len": 10,
                "timestamp": "ads_ts",
                "fields": [
                    {"name": "ads_item", "hash_buckets": 100, "table": "item"},
                    {"name": "ads_action", "vocab_size": 4},
                ],
            },
        ],
        "labels": [{"name": "click", "serve": False}, {"name": "checkout", "mask": "click"}],
        "sampling": {"negative_rate": 0.05, "inclusion_column": "sample_rate"},
    }


def test_valid_spec_round_trips(tmp_path: Path) -> None:
    spec = FeatureSpec.from_dict(_spec_dict())
    path = tmp_path / "spec.yaml"
    spec.save(path)
    assert load_spec(path) == spec
    assert spec.embedding_tables() == {"gender": 5, "item": 102, "ads_action": 6}
    assert [s.name for s in spec.sequences] == ["ads"]
    assert spec.sequences[0].target.name == "ads_item"
    cols = spec.source_columns()
    assert cols[0] == "ts" and "ads_ts" in cols and "sample_rate" in cols and "click" in cols
    assert len(cols) == len(set(cols))


def test_drop_category_removes_only_that_category() -> None:
    spec = FeatureSpec.from_dict(_spec_dict())
    dropped = spec.without_categories(["demographic"])
    assert [f.name for f in dropped.features] == ["n_conv", "emb", "ad_id", "ads"]
    assert dropped.without_categories(["sequence"]).sequences == []
    with pytest.raises(SpecError, match="unknown feature category"):
        spec.without_categories(["nope"])


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["features"].append({"name": "x", "role": "foo", "category": "counting"}),
            r"features\[6\] \('x'\): unknown role 'foo'",
        ),
        (
            lambda d: d["features"].append(
                {"name": "age", "role": "dense", "category": "counting"}
            ),
            r"duplicate feature name\(s\): \['age'\]",
        ),
        (
            lambda d: d["features"].append(
                {"name": "s2", "role": "sequence", "fields": [{"name": "a", "vocab_size": 3}]}
            ),
            r"features\[6\] \('s2'\)\.timestamp: a sequence needs a 'timestamp'",
        ),
        (
            lambda d: d["features"][2].update(hash_buckets=5),
            r"exactly one of vocab_size or hash_buckets",
        ),
        (
            lambda d: d["features"][4].update(hash_buckets=7),
            r"'ads_item' shares table 'item' with 'ad_id' but maps ids differently",
        ),
        (
            lambda d: d["features"][0].update(category="nonsense"),
            r"features\[0\] \('age'\)\.category",
        ),
        (lambda d: d["labels"].append({"name": "click"}), r"duplicate label"),
    ],
)
def test_bad_spec_names_the_entry(mutate: Any, expected: str) -> None:
    data = _spec_dict()
    mutate(data)
    with pytest.raises(SpecError, match=expected):
        FeatureSpec.from_dict(data)


def test_load_spec_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [")
    with pytest.raises(SpecError, match=r"bad\.yaml is not valid YAML"):
        load_spec(bad)
