"""``dhen-cvr quickstart``: from nothing to a trained, evaluated multi-task CVR model.

1. synthesise a small conversion-ads world (:mod:`dhen_cvr.data.synth`) into ``OUT/data``;
2. train the ``tiny`` DHEN with the self-supervised next-action loss on all days but
   the last, one epoch (``OUT/run``);
3. evaluate on the last day, per head, next to the oracle (the data's true
   probabilities: the best ROC-AUC any model can reach);
4. write ``OUT/report.md`` and ``OUT/report.png`` (training loss; per-head AUC vs oracle).

A re-run replaces the previous quickstart in ``OUT`` (and only a quickstart folder).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from dhen_cvr.config import ExperimentConfig, load_experiment_config
from dhen_cvr.data import folders
from dhen_cvr.data.synth import WorldConfig, synthesize
from dhen_cvr.eval.evaluate import EvalReport
from dhen_cvr.eval.report import markdown_table
from dhen_cvr.pipeline.train_and_evaluate import RunResult, train_and_evaluate

__all__ = ["QUICKSTART_WORLD", "QuickstartResult", "claim_folder", "quickstart"]

MARKER = ".dhen-cvr-quickstart"

# Sized for about a minute on an idle 2-core machine: 6 days of ~8k rows (150k
# impressions a day, 5% of the non-converting ones kept), one epoch over days 1-5 (a
# second epoch overfits the embeddings: no better next-day AUC, worse calibration).
QUICKSTART_WORLD = WorldConfig(days=6, users=4000, impressions_per_day=150_000, max_seq_len=32)
QUICKSTART_OVERRIDES = ("train.epochs=1",)


@dataclass(frozen=True)
class QuickstartResult:
    out: Path
    data: Path
    train: RunResult
    report: EvalReport
    markdown: Path
    plot: Path
    seconds: float


def claim_folder(out: Path) -> None:
    """Create ``out``, or empty it if it holds an earlier quickstart; refuse otherwise."""
    folders.claim_folder(out, MARKER, "a quickstart folder")


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    world: WorldConfig = QUICKSTART_WORLD,
    config: ExperimentConfig | str = "tiny",
    seed: int = 0,
    show_progress: bool = True,
) -> QuickstartResult:
    """Run the whole pipeline on a synthetic world; see the module docstring."""
    started = time.perf_counter()
    out = Path(out)
    claim_folder(out)
    world = world.model_copy(update={"seed": seed})
    data = out / "data"
    synthesize(data, world)
    if not isinstance(config, ExperimentConfig):
        config = load_experiment_config(config, [*QUICKSTART_OVERRIDES, f"train.seed={seed}"])
    last = world.days
    result = train_and_evaluate(
        config,
        data,
        f"1-{last - 1}",
        out / "run",
        eval_days=str(last),
        show_progress=show_progress,
    )
    assert result.eval is not None
    markdown, plot = out / "report.md", out / "report.png"
    seconds = time.perf_counter() - started
    _plot(result, plot)
    markdown.write_text(_markdown(result, world, plot, seconds))
    return QuickstartResult(out, data, result, result.eval, markdown, plot, seconds)


def _plot(result: RunResult, path: Path) -> None:
    """Training loss by step (left) and per-head ROC-AUC vs the oracle (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert result.eval is not None
    lines = (result.run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in records]
    left.plot(steps, [r["loss"] for r in records], label="total")
    left.plot(steps, [r["loss/supervised"] for r in records], label="supervised (BCE)")
    if records and "loss/ssl" in records[0]:
        left.plot(steps, [r["loss/ssl"] for r in records], label="self-supervised")
    left.set(xlabel="step", ylabel="loss", title="training loss")
    left.legend()

    report = result.eval
    heads = report.heads
    x = range(len(heads))
    model_auc = [report.mean[h]["roc_auc"] for h in heads]
    oracle_auc = [report.mean[h]["oracle_roc_auc"] for h in heads]
    right.bar([i - 0.2 for i in x], model_auc, width=0.4, label="model")
    right.bar([i + 0.2 for i in x], oracle_auc, width=0.4, label="oracle")
    right.set_xticks(list(x), [h if report.served[h] else f"{h}\n(not served)" for h in heads])
    finite = [v for v in model_auc + oracle_auc if v == v]
    right.set_ylim(max(0.0, min(finite, default=0.5) - 0.05), 1.0)
    right.set(ylabel="ROC-AUC", title=f"next-day ROC-AUC ({', '.join(report.days)})")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(result: RunResult, world: WorldConfig, plot: Path, seconds: float) -> str:
    assert result.eval is not None
    report, progress = result.eval, result.progress
    data = result.run.parent / "data"
    served = [h for h in report.heads if report.served[h]]
    gap = sum(report.mean[h]["oracle_roc_auc"] - report.mean[h]["roc_auc"] for h in served)
    last = world.days
    return f"""# dhen-cvr quickstart

Data: a synthetic conversion-ads world in `{data}`: {world.users} users, {world.days} days,
about {world.impressions_per_day} impressions a day of which every converting one and
{world.negative_rate:.0%} of the others are kept.

Model: the `tiny` multi-task DHEN (layer 1 MLP + Transformer, layer 2 MLP + MaskNet) with
the self-supervised next-action loss, trained on days 1-{last - 1}
({progress.epoch} epochs, {progress.step} steps, {progress.examples_seen} examples,
{result.examples_per_s:.0f} examples/s) and evaluated on day {last} ({report.days[0]}).
Total time {seconds:.0f} s.

{markdown_table(report)}

- *oracle*: the same metric of the world's true probabilities, the best any model can
  reach. Mean ROC-AUC gap to the oracle over the served heads: {gap / len(served):.4f}.
- *calib.*: sum of predictions / sum of labels on the full population (predictions
  corrected for the 5% negative down-sampling, rows weighted by 1 / inclusion
  probability). The correction assumes a row is kept because of that head's label, so it
  does not hold for the click head, which trains but is not served.

![training loss and per-head AUC vs the oracle]({plot.name})

Train and evaluate yourself:

```
dhen-cvr train --config tiny --data {data} --train-days 1-{last - 1} --eval-days {last} --out my-run
dhen-cvr evaluate --run my-run --data {data} --days {last}
```
"""
