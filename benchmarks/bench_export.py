"""Exporting the serving programs: ``export_program`` vs torch's defaults.

    python -m benchmarks.bench_export [--config tiny] [--seq-len 32] [--rounds 2]

For ``configs/<config>.yaml`` on the synthetic world's spec, it times tracing both
artefact programs (one user x N candidates, and B rows) with
:func:`dhen_cvr.serve.artefact.export_program` and with a plain ``torch.export.export`` of
the same module, inputs and dynamic shapes (torch's defaults: the fake-tensor dispatch
cache on), interleaved over ``--rounds`` rounds (the order alternates). It checks that
both ways trace the same graphs and reports the median seconds and their ratio. (Loading
a saved program is about as fast either way, so ``load_artefact`` keeps torch's defaults.)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from benchmarks.bench_model import build_model, synthetic_spec
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.model.cvr_model import ServedCVRModel
from dhen_cvr.serve import artefact, export_program


def _torch_default_export(
    served: ServedCVRModel, spec: FeatureSpec
) -> torch.export.ExportedProgram:
    """What ``export_program`` does, with torch's default settings (the same inputs and
    dynamic shapes, from the artefact module's own helpers)."""
    inputs = artefact._example_inputs(spec, served.one_user)
    shapes = artefact._dynamic_shapes(spec, served.one_user)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(served, inputs, dynamic_shapes=shapes, strict=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    spec = synthetic_spec(args.seq_len)
    model = build_model(args.config, spec, args.seq_len, torch.device("cpu")).eval()
    spec = artefact.served_spec(model)
    programs = [ServedCVRModel(model, probabilities=True, one_user=u).eval() for u in (True, False)]
    ways: dict[str, Callable[[ServedCVRModel], torch.export.ExportedProgram]] = {
        "torch defaults": lambda s: _torch_default_export(s, spec),
        "export_program": lambda s: export_program(s, spec),
    }
    graphs: dict[str, str] = {}
    export_s: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))  # neither always first
        for name in order:
            start = time.perf_counter()
            exported = [ways[name](served) for served in programs]
            export_s[name].append(time.perf_counter() - start)
            graphs[name] = "\n".join(str(e.graph) for e in exported)
    same = graphs["torch defaults"] == graphs["export_program"]
    print(f"same graphs both ways: {same}")
    seconds = {name: statistics.median(s) for name, s in export_s.items()}
    for name, value in seconds.items():
        print(f"{name:16} {value:6.1f} s to trace both programs")
    print(f"speed-up: {seconds['torch defaults'] / seconds['export_program']:.2f}x")


if __name__ == "__main__":
    main()
