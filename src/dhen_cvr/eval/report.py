"""Tables of an :class:`~dhen_cvr.eval.evaluate.EvalReport`: terminal text and Markdown.

One row per head (a ``serve: false`` head is marked ``(not served)``); columns are the
model's ROC-AUC and PR-AUC next to the oracle's, log loss, calibration (sum p / sum y,
with its standard error, overall and in the top decile of predictions; then sum p / sum oracle p, the same without
label noise), rows and positives, and the relative lift when the report has a baseline.
A metric that cannot be computed shows ``-``; the terminal table then says why below it
(a head with no positives on a day, and what its mean over days covers).
"""

from __future__ import annotations

import math

from dhen_cvr.eval.evaluate import EvalReport, HeadMetrics

__all__ = ["format_report", "markdown_table", "table_rows"]

_COLUMNS = (
    ("ROC-AUC", "roc_auc", "{:.4f}"),
    ("oracle", "oracle_roc_auc", "{:.4f}"),
    ("PR-AUC", "pr_auc", "{:.4f}"),
    ("oracle", "oracle_pr_auc", "{:.4f}"),
    ("log loss", "log_loss", "{:.4f}"),
    ("calib.", "calibration", "{:.3f}"),
    ("± se", "calibration_se", "{:.3f}"),
    ("top10", "calibration_top10", "{:.3f}"),
    ("vs oracle", "calibration_vs_oracle", "{:.3f}"),
    ("top10", "calibration_top10_vs_oracle", "{:.3f}"),
    ("rows", "count", "{:d}"),
    ("pos.", "positives", "{:d}"),
)
_LIFT_COLUMNS = (("lift AUC", "roc_auc"), ("lift PR", "pr_auc"))


def _fmt(template: str, value: float | int) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return template.format(int(value) if template == "{:d}" else value)


def table_rows(
    report: EvalReport, metrics: dict[str, HeadMetrics], *, with_lift: bool
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) for one day's or the mean's metrics."""
    header = ["head", *(name for name, _, _ in _COLUMNS)]
    if with_lift:
        header += [name for name, _ in _LIFT_COLUMNS]
    rows = []
    for head in report.heads:
        label = head if report.served.get(head, True) else f"{head} (not served)"
        row = [label, *(_fmt(fmt, metrics[head].get(key, math.nan)) for _, key, fmt in _COLUMNS)]
        if with_lift:
            lift = (report.lift or {}).get(head, {})
            row += [_fmt("{:+.2%}", lift.get(key, math.nan)) for _, key in _LIFT_COLUMNS]
        rows.append(row)
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_report(report: EvalReport, *, per_day: bool = True) -> str:
    """The terminal table: each day (when more than one) and the mean over days."""
    parts = []
    if per_day and len(report.days) > 1:
        for day in report.days:
            header, rows = table_rows(report, report.per_day[day], with_lift=False)
            parts.append(f"day {day}\n{_text_table(header, rows)}")
    title = (
        f"day {report.days[0]}" if len(report.days) == 1 else f"mean over {len(report.days)} days"
    )
    if report.baseline:
        title += f" (lift vs {report.baseline})"
    header, rows = table_rows(report, report.mean, with_lift=report.lift is not None)
    parts.append(f"{title}\n{_text_table(header, rows)}")
    text = "\n\n".join(parts)
    return "\n".join([text, *(f"warning: {w}" for w in _undefined(report))])


def markdown_table(report: EvalReport) -> str:
    """The mean-over-days table in Markdown."""
    header, rows = table_rows(report, report.mean, with_lift=report.lift is not None)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [f"\n*{w}*" for w in _undefined(report)]
    return "\n".join(lines)


def _undefined(report: EvalReport) -> list[str]:
    """Why metrics show ``-`` (see :func:`~dhen_cvr.eval.evaluate.undefined_metric_notes`)."""
    return [v for k, v in report.notes.items() if k.startswith("undefined/")]
