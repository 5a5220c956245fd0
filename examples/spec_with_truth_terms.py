"""Print a data folder's feature spec with some of its ``truth_*`` columns added as dense
features: what a model gains when it is *handed* a latent term of the true logits.

    dhen-cvr synth --out runs/world-truth --days 6 --users 4000 \
        --impressions-per-day 150000 --max-seq-len 32 --seed 0 --truth-terms
    python examples/spec_with_truth_terms.py runs/world-truth truth_conv_user_bias \
        > runs/spec-user-bias.yaml
    dhen-cvr study --study configs/studies/cpu_baselines.yaml --data runs/world-truth \
        --train-days 1-5 --eval-days 6 --out runs/handed-user-bias \
        --spec runs/spec-user-bias.yaml --only dhen+ssl --only gbdt

(the same study without ``--spec`` is the comparison). The columns are those
``synth --truth-terms`` writes (``truth_click_*``, ``truth_conv_*``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dhen_cvr.data.spec import DenseFeature, FeatureCategory, load_data_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a data folder written with --truth-terms")
    parser.add_argument("columns", nargs="+", help="truth_* columns to add as dense features")
    args = parser.parse_args()
    spec = load_data_spec(args.data)
    bad = [c for c in args.columns if not c.startswith("truth_")]
    if bad:
        sys.exit(f"error: not truth_* columns: {bad}")
    added = [
        DenseFeature(name=c, role="dense", category=FeatureCategory.demographic)
        for c in args.columns
    ]
    sys.stdout.write(spec.model_copy(update={"features": [*spec.features, *added]}).to_yaml())


if __name__ == "__main__":
    main()
