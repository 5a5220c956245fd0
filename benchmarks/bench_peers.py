"""dhen-cvr next to DeepCTR-Torch on the same flat table and the same DCN V2 shape.

    pip install -e '.[bench]'            # deepctr-torch 0.3.0 (constraints.txt pins it)
    python -m benchmarks.bench_peers     # 3 interleaved rounds, about a minute on 1 thread
    python -m benchmarks.bench_peers --rounds 5 --compile

One synthetic world (2 days of ``--rows`` impressions each, no down-sampling, conversion
odds x ``--conversion-scale`` so that a day has a few hundred conversions) is cut to a
flat table: every dense, categorical and pre-trained column, no sequences. Both
libraries train on day 1 for ``--epochs`` (5: at 1 epoch, about 40 steps, neither has
left chance, AUC 0.4-0.6) and are scored on day 2 (next-day ROC-AUC of ``--label``), one
thread each, in interleaved rounds (A B C A B C ...):

- DeepCTR-Torch ``DCNMix`` with 2 cross layers, rank 64, one expert (so the cross layer
  is DCN V2's low-rank ``x0 * (U g(V x) + b) + x``), DNN [128, 128], embeddings 16, Adam
  1e-3, batch 1024, no L2 (dhen-cvr has no weight decay here), its own ``fit`` loop on
  in-memory tensors. Dense columns get dhen-cvr's preprocessing (log1p where the spec
  says, min-max on day 1), the usual DeepCTR recipe.
- dhen-cvr: one DHEN layer ``sum(dcn_v2 {2 layers, rank 64}, mlp [128, 128])``, D = 16,
  logits straight from the flattened tokens, AdamW without weight decay (= Adam) at 1e-3
  constant, batch 1024, no clipping, through :func:`dhen_cvr.train.train` (the
  streaming Parquet reader inside the loop), with the world's 4 heads and with
  ``--label`` alone.

Beside them, untimed, on the same day-2 rows: the oracle (the world's true probabilities,
which also see the sequences the flat table leaves out) and LightGBM on the same flat
columns (200 trees, what a practitioner fits first), so the AUC column reads against
both ends.

"training loop": DeepCTR's ``model.fit``, dhen-cvr's ``Trainer.fit`` (its
``examples_per_s``; reading Parquet and the end-of-epoch checkpoint included).
"end to end": from the Parquet files to a trained model (DeepCTR: read, preprocess,
build, fit; dhen-cvr: the ``train()`` call: statistics, model, fit, checkpoint).

DeepCTR-Torch 0.3.0 does not import as published: ``deepctr_torch/utils.py`` does
``import requests`` (not a declared dependency: ``ModuleNotFoundError: No module named
'requests'``) and ``deepctr_torch/__init__.py`` starts a thread that asks PyPI for a newer
version (a network call at run time). :func:`_import_deepctr` imports it against a
stand-in ``requests`` whose ``get`` answers "not OK" without touching the network;
nothing else is patched. Apart from that it runs unchanged on torch 2.13.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

ROUNDS = 3
BATCH = 1024
LR = 1e-3
RANK = 64
MLP = [128, 128]
EMBEDDING = 16
EPOCHS = 5


def cpu_description() -> str:
    """CPU model and the SIMD flags that matter for the kernels (Linux)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]
    present = " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)
    return f"{model}; {present}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


# ---- the data ------------------------------------------------------------------------
def make_flat_world(root: Path, args: argparse.Namespace) -> Path:
    """A 2-day world without sequences or down-sampling (same Parquet for both)."""
    from dhen_cvr.data.spec import SPEC_FILE, SamplingSpec, load_data_spec
    from dhen_cvr.data.synth import WorldConfig, synthesize
    from dhen_cvr.data.writer import day_dirs

    full = root / "world"
    synthesize(
        full,
        WorldConfig(
            days=2,
            users=args.users,
            impressions_per_day=args.rows,
            negative_rate=1.0,
            conversion_scale=args.conversion_scale,
            max_seq_len=4,
            history_days=3,
            seed=args.seed,
        ),
        overwrite=True,
    )
    spec = load_data_spec(full).without_categories(["sequence"])
    spec = spec.model_copy(update={"sampling": SamplingSpec(), "user_id": None})
    flat = root / "flat"
    flat.mkdir()
    columns = [*spec.source_columns(), spec.request_time]
    columns = list(dict.fromkeys(c for c in columns if c))
    for day in day_dirs(full):
        (flat / day.name).mkdir()
        table = pq.read_table(day, columns=columns)
        pq.write_table(table, flat / day.name / "part-00000.parquet", row_group_size=8192)
    spec.save(flat / SPEC_FILE)
    return flat


def one_label(flat: Path, label: str, root: Path) -> Path:
    """The same files with a spec that keeps only ``label`` (a 1-head model)."""
    from dhen_cvr.data.spec import SPEC_FILE, load_data_spec

    spec = load_data_spec(flat)
    only = spec.model_copy(update={"labels": [lb for lb in spec.labels if lb.name == label]})
    out = root / "flat-1"
    out.mkdir()
    for day in sorted(flat.glob("*=*")):
        (out / day.name).symlink_to(day.resolve())
    only.save(out / SPEC_FILE)
    return out


# ---- dhen-cvr --------------------------------------------------------------------------
def dhen_config(compile_: bool = False) -> Any:
    from dhen_cvr.config import ExperimentConfig

    return ExperimentConfig.model_validate(
        {
            "model": {
                "dim": EMBEDDING,
                "embedding_dim": EMBEDDING,
                "ssl_dim": EMBEDDING,
                "dhen": {
                    "norm": "none",
                    "dropout": 0.0,
                    "layers": [
                        {
                            "ensemble": "sum",
                            "modules": [
                                {"name": "dcn_v2", "num_layers": 2, "rank": RANK},
                                {"name": "mlp", "hidden": MLP},
                            ],
                        }
                    ],
                },
                "head_hidden": [],
            },
            "loss": {"ssl": {"objective": "none"}},
            "train": {
                "batch_size": BATCH,
                "epochs": EPOCHS,
                "lr": LR,
                "weight_decay": 0.0,
                "warmup_steps": 0,
                "decay": "none",
                "grad_clip": 0.0,
                "shuffle": True,
                "device": "cpu",
                "threads": 1,
                "log_every": 10,
                "tensorboard": False,
                "recalibrate": False,
                "compile": compile_,
            },
        }
    )


def run_dhen(data: Path, out: Path, label: str, compile_: bool = False) -> dict[str, float]:
    from dhen_cvr.eval.evaluate import evaluate
    from dhen_cvr.train import train

    started = time.perf_counter()
    result = train(dhen_config(compile_), data, "1", out, show_progress=False)
    end_to_end = time.perf_counter() - started
    report = evaluate(out, data, "2", save=False)
    return {
        "loop": result.examples_per_s,
        "e2e": result.progress.examples_seen / end_to_end,
        "auc": report.mean[label]["roc_auc"],
    }


# ---- DeepCTR-Torch ---------------------------------------------------------------------
def _import_deepctr() -> Any:
    """``deepctr_torch`` imported against a stand-in ``requests`` (see the module
    docstring): its version check then reads "not OK" and never opens a connection,
    whether or not the real ``requests`` is installed. The real one (if any) is put back
    afterwards; only ``deepctr_torch.utils`` keeps the stand-in."""
    if "deepctr_torch" in sys.modules:
        return sys.modules["deepctr_torch"]
    stub = types.ModuleType("requests")
    stub.codes = types.SimpleNamespace(ok=200)  # type: ignore[attr-defined]
    stub.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="")  # type: ignore[attr-defined]
    saved = sys.modules.get("requests")
    sys.modules["requests"] = stub
    try:
        import deepctr_torch
    except ModuleNotFoundError as err:
        raise SystemExit(
            f"bench_peers needs DeepCTR-Torch ({err}): pip install -e '.[bench]'"
        ) from None
    finally:
        if saved is None:
            del sys.modules["requests"]
        else:
            sys.modules["requests"] = saved
    return deepctr_torch


def _deepctr_inputs(spec: Any, day: Path, stats: Any) -> dict[str, np.ndarray]:
    table = pq.read_table(day)
    x: dict[str, np.ndarray] = {}
    for f in spec.dense:
        v = table[f.source].to_numpy(zero_copy_only=False).astype(np.float64)
        v = np.nan_to_num(v)
        if f.log1p:
            v = np.log1p(np.maximum(v, 0))
        lo, hi = stats[f.name]
        x[f.name] = ((v - lo) / max(hi - lo, 1e-12)).clip(0, 1).astype(np.float32)
    for f in spec.pretrained:
        x[f.name] = np.stack(table[f.source].to_numpy(zero_copy_only=False)).astype(np.float32)
    for f in spec.categorical:
        ids = table[f.source].to_numpy(zero_copy_only=False)
        assert f.vocab_size is not None, f"{f.name}: hashed ids are not mapped here"
        ids = np.nan_to_num(ids.astype(np.float64), nan=-1).astype(np.int64)
        x[f.name] = np.where((ids >= 0) & (ids < f.vocab_size), ids + 1, 0)
    return x


def run_deepctr(data: Path, label: str, seed: int) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from dhen_cvr.data.spec import load_data_spec
    from dhen_cvr.data.writer import day_dirs

    _import_deepctr()
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DCNMix

    started = time.perf_counter()
    spec = load_data_spec(data)
    train_day, test_day = day_dirs(data)[:2]
    raw = pq.read_table(train_day)
    stats = {}
    for f in spec.dense:
        v = np.nan_to_num(raw[f.source].to_numpy(zero_copy_only=False).astype(np.float64))
        v = np.log1p(np.maximum(v, 0)) if f.log1p else v
        stats[f.name] = (float(v.min()), float(v.max()))
    x_train = _deepctr_inputs(spec, train_day, stats)
    y_train = raw[label].to_numpy().astype(np.float32)
    columns = [
        *(SparseFeat(f.name, f.num_rows + 1, embedding_dim=EMBEDDING) for f in spec.categorical),
        *(DenseFeat(f.name, 1) for f in spec.dense),
        *(DenseFeat(f.name, f.dim) for f in spec.pretrained),
    ]
    model = DCNMix(
        columns,
        columns,
        cross_num=2,
        dnn_hidden_units=tuple(MLP),
        low_rank=RANK,
        num_experts=1,
        l2_reg_linear=0.0,
        l2_reg_embedding=0.0,
        l2_reg_cross=0.0,
        l2_reg_dnn=0.0,
        seed=seed,
        device="cpu",
    )
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), "binary_crossentropy")
    loop_started = time.perf_counter()
    with open(os.devnull, "w") as quiet, _redirect_stdout(quiet):
        model.fit(x_train, y_train, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=True)
    done = time.perf_counter()
    rows = len(y_train) * EPOCHS
    test = pq.read_table(test_day)
    scores = model.predict(_deepctr_inputs(spec, test_day, stats), batch_size=4096)
    auc = roc_auc_score(test[label].to_numpy(), scores.ravel())
    return {"loop": rows / (done - loop_started), "e2e": rows / (done - started), "auc": auc}


def reference_aucs(root: Path, flat: Path, label: str, seed: int) -> dict[str, float]:
    """Next-day ROC-AUC of ``label`` on day 2 for the oracle (the full world's
    ``oracle_<label>`` column) and for LightGBM fitted on day 1's flat columns."""
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    from dhen_cvr.data.spec import load_data_spec
    from dhen_cvr.data.writer import day_dirs

    spec = load_data_spec(flat)
    columns = [f.source for f in (*spec.dense, *spec.categorical)]
    train_day, test_day = day_dirs(flat)[:2]

    def table(day: Path) -> tuple[np.ndarray, np.ndarray]:
        t = pq.read_table(day, columns=[*columns, label])
        x = np.stack([t[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], 1)
        return x, t[label].to_numpy(zero_copy_only=False)

    (x_train, y_train), (x_test, y_test) = table(train_day), table(test_day)
    gbdt = lgb.LGBMClassifier(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=15,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    ).fit(x_train, y_train)
    oracle = pq.read_table(day_dirs(root / "world")[1], columns=[label, f"oracle_{label}"])
    return {
        "oracle (uses the sequences)": float(
            roc_auc_score(oracle[label].to_numpy(), oracle[f"oracle_{label}"].to_numpy())
        ),
        "LightGBM, 200 trees": float(roc_auc_score(y_test, gbdt.predict_proba(x_test)[:, 1])),
    }


class _redirect_stdout:
    """DeepCTR's ``fit`` prints its device and sample counts even with ``verbose=0``."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.saved = stream, sys.stdout

    def __enter__(self) -> None:
        self.saved, sys.stdout = sys.stdout, self.stream

    def __exit__(self, *exc: object) -> None:
        sys.stdout = self.saved


# ---- the table -------------------------------------------------------------------------
def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):>9.0f} [{min(values):.0f}-{max(values):.0f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--rows", type=int, default=40_000, help="impressions per day")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--conversion-scale", type=float, default=10.0)
    parser.add_argument("--label", default="checkout", help="the head DeepCTR trains")
    parser.add_argument(
        "--compile", action="store_true", help="also dhen-cvr with train.compile (warmed up)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="epochs, the same for both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    global EPOCHS
    EPOCHS = args.epochs

    torch.set_num_threads(1)
    # dhen-cvr's Trainer retains freed CPU memory (train.retain_cpu_memory): so does every
    # side of the comparison, from the first round on.
    from dhen_cvr.runtime import retain_freed_cpu_memory

    retain_freed_cpu_memory()
    print(f"CPU: {cpu_description()}")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        root = Path(tmp)
        flat = make_flat_world(root, args)
        flat_one = one_label(flat, args.label, root)
        rows = pq.read_metadata(next(sorted(flat.glob("dt=*"))[0].glob("*.parquet")))
        print(f"flat table: {rows.num_rows} training rows, {rows.num_columns} columns")
        candidates: dict[str, Callable[[int], dict[str, float]]] = {
            "DeepCTR-Torch DCNMix": lambda r: run_deepctr(flat, args.label, args.seed),
            "dhen-cvr, 4 heads": lambda r: run_dhen(flat, root / f"d4-{r}", args.label),
            "dhen-cvr, 1 head": lambda r: run_dhen(flat_one, root / f"d1-{r}", args.label),
        }
        if args.compile:
            candidates["dhen-cvr, 4 heads, compile"] = lambda r: run_dhen(
                flat, root / f"d4c-{r}", args.label, compile_=True
            )
        if args.compile:  # compile once, untimed: later runs in this process reuse it
            run_dhen(flat, root / "compile-warm-up", args.label, compile_=True)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
        for r in range(args.rounds):
            for name, run in candidates.items():
                results[name].append(run(r))
        references = reference_aucs(root, flat, args.label, args.seed)

    print(f"\nexamples/s, median [range] over {args.rounds} interleaved rounds, 1 thread")
    print(f"{'':<28} {'training loop':>24} {'end to end':>24} {'next-day AUC':>13}")
    for name, runs in results.items():
        loop, e2e = [x["loop"] for x in runs], [x["e2e"] for x in runs]
        auc = statistics.median(x["auc"] for x in runs)
        print(f"{name:<28} {_summary(loop):>24} {_summary(e2e):>24} {auc:>13.4f}")
    for name, auc in references.items():
        print(f"{name:<28} {'(untimed)':>24} {'':>24} {auc:>13.4f}")
    peer = "DeepCTR-Torch DCNMix"
    print("\nratios: median [range] of the per-round ratios (a round's runs share the load)")
    print(f"{'':<50} {'training loop':>20} {'end to end':>20}")
    for a, b in [
        ("dhen-cvr, 4 heads", peer),
        ("dhen-cvr, 1 head", peer),
        ("dhen-cvr, 4 heads", "dhen-cvr, 1 head"),
        ("dhen-cvr, 4 heads, compile", "dhen-cvr, 4 heads"),
    ]:
        if a in results and b in results:
            cells = []
            for key in ("loop", "e2e"):
                ratios = [x[key] / y[key] for x, y in zip(results[a], results[b], strict=True)]
                med = statistics.median(ratios)
                cells.append(f"{med:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
            print(f"{a + ' / ' + b:<50} {cells[0]:>20} {cells[1]:>20}")


if __name__ == "__main__":
    main()
