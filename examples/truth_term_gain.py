"""What one latent term of the true logits is still worth to a trained model: per served
head, next-day ROC-AUC of ``log p_model + k * term`` for the best ``k`` on a grid.

    dhen-cvr synth --out runs/world-truth --days 6 --users 4000 \
        --impressions-per-day 150000 --max-seq-len 32 --seed 0 --truth-terms
    dhen-cvr predict --run RUN --data runs/world-truth --days 6 --out runs/pred-truth
    python examples/truth_term_gain.py runs/world-truth runs/pred-truth 2026-01-06 \
        'truth_conv_log_mix_{head}' truth_conv_user_bias truth_click_ad_quality

A term the model already uses gains nothing (best ``k`` = 0); one it misses gains the
ROC-AUC it would add if the model knew it. ``{head}`` in a name stands for the head
(``truth_conv_log_mix_checkout`` ...). The AUC is over the rows as logged (down-sampled),
the ROC-AUC column of ``evaluate``; a head's label mask, if any, is ignored. The ``k`` is chosen on the same day, so a gain is an upper bound: a diagnostic of
what is left to learn, not a model result. The world must be the one the run's training
days came from, written with ``--truth-terms`` (the columns are otherwise equal).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from dhen_cvr.data.spec import load_data_spec

GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def _day_table(folder: Path, day: str) -> dict[str, np.ndarray]:
    files = sorted((folder / f"dt={day}").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder / f'dt={day}'}: no Parquet files")
    table = pq.read_table(files)
    return {name: table.column(name).to_numpy() for name in table.schema.names}


def term_gains(
    data: Path, predictions: Path, day: str, terms: list[str]
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """-> term -> head -> (ROC-AUC as is, best ROC-AUC with the term added, its ``k``)."""
    spec = load_data_spec(data)
    rows, pred = _day_table(data, day), _day_table(predictions, day)
    if not np.array_equal(rows[spec.request_time], pred[spec.request_time]):
        raise ValueError(f"{predictions} day {day}: rows differ from {data} (another world?)")
    heads = [lb.name for lb in spec.labels if lb.serve]
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for term in terms:
        out[term] = {}
        for head in heads:
            column = term.format(head=head)
            if column not in rows:
                raise KeyError(f"{data}: no column {column!r} (written with --truth-terms?)")
            x = rows[column].astype(np.float64)
            x -= x.mean()
            logit = np.log(pred[f"p_{head}"].astype(np.float64))
            auc = {k: roc_auc_score(rows[head], logit + k * x) for k in GRID}
            best = max(auc, key=lambda k: auc[k])
            out[term][head] = (auc[0.0], auc[best], best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a data folder written with --truth-terms")
    parser.add_argument("predictions", type=Path, help="dhen-cvr predict's output folder")
    parser.add_argument("day", help="the day, YYYY-MM-DD")
    parser.add_argument("terms", nargs="+", help="truth_* columns ({head} for per-head ones)")
    args = parser.parse_args()
    try:
        gains = term_gains(args.data, args.predictions, args.day, args.terms)
    except (OSError, KeyError, ValueError) as err:
        sys.exit(f"error: {err}")
    for term, by_head in gains.items():
        cells = [f"{h} {a:.4f} -> {b:.4f} (k={k:g})" for h, (a, b, k) in by_head.items()]
        mean = np.mean([b - a for a, b, _ in by_head.values()])
        print(f"{term}: {' | '.join(cells)} | mean gain {mean:+.4f}")


if __name__ == "__main__":
    main()
