"""Serving latency and a loopback load test (DESIGN section 7, issue 12).

    python -m benchmarks.bench_serve [--configs tiny paper] [--candidates 1 100 500 1000]
                                     [--load-seconds 20] [--clients 8] [--skip-load]

Latency: one user x N candidates, ``configs/tiny.yaml`` and ``configs/paper.yaml``
(random-init weights; latency does not depend on them) on the synthetic world's spec,
every sequence full at the model's cut, 1 thread, ``torch.inference_mode``. Variants,
interleaved round by round in the same run:

- ``rows``: :class:`ServedCVRModel` on N rows, the user's features and sequences
  duplicated on each (what a per-row server does);
- ``request``: the same model with ``one_user=True`` (``CVRModel.score_candidates``:
  the user side once per request), eager;
- ``exported``: the ``request.pt2`` program of an artefact (``torch.export``);
- ``bf16``: ``request`` under bfloat16 autocast, where the CPU has native bf16.

p50/p99 in ms of the calling thread's CPU time over all samples (with 1 thread, the
latency on an idle core; a shared machine inflates wall time, also shown); ratios
rows/variant at the same N. ``encode``: the HTTP-side work (schema validation + the
request encoder) at each N.

Load test: a tiny artefact (random init, exported through a real checkpoint) served by a
``dhen-cvr serve`` subprocess on loopback; ``--clients`` concurrent async httpx clients
post 1 user x ``--load-candidates`` requests for ``--load-seconds``; reports requests/s,
p50/p99 and errors (anything but a 200).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_model import CONFIGS, build_model, synthetic_spec
from dhen_cvr.data.spec import FeatureSpec, SequenceFeature
from dhen_cvr.model.cvr_model import CVRModel, ServedCVRModel

ROOT = Path(__file__).resolve().parents[1]


# ---- requests ---------------------------------------------------------------------------
def random_request(spec: FeatureSpec, n: int, seed: int = 0) -> dict[str, Any]:
    """A valid /v1/score body: random raw ids and values, every sequence full at its cut
    (``spec``: a served spec, whose ``max_len`` is the model's cut)."""
    rng = np.random.default_rng(seed)
    now = 1_767_312_000

    def value(f: Any) -> Any:
        if f.role == "dense":
            return float(rng.uniform(0, 5))
        if f.role == "pretrained":
            return rng.normal(size=f.dim).round(4).tolist()
        return int(rng.integers(0, f.vocab_size or 1000))

    plain = [f for f in spec.features if not isinstance(f, SequenceFeature)]
    sequences = {}
    for s in spec.sequences:
        ts = np.sort(now - rng.integers(60, 60 * 86400, s.max_len)).tolist()
        items = {
            fld.name: rng.integers(0, fld.vocab_size or 1000, s.max_len).tolist()
            for fld in s.fields
        }
        sequences[s.name] = {"timestamps": ts, **items}
    return {
        "request_time": now,
        "user": {
            "features": {f.name: value(f) for f in plain if f.category.value != "candidate"},
            "sequences": sequences,
        },
        "candidates": [
            {f.name: value(f) for f in plain if f.category.value == "candidate"} for _ in range(n)
        ],
    }


# ---- latency ----------------------------------------------------------------------------
def _samples(fn: Callable[[], Any], repeats: int) -> list[tuple[float, float]]:
    """(wall ms, this thread's CPU ms) per call. With 1 torch thread every kernel runs on
    the calling thread, so CPU time is the latency the call would have on an idle core
    (wall time also counts the time other processes held the core)."""
    out = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        out.append(((time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3))
    return out


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def _repeated(inputs: tuple[torch.Tensor, ...], n_sequences: int) -> tuple[torch.Tensor, ...]:
    """One-user inputs -> per-row inputs (the user's sequences copied onto every row)."""
    n = inputs[0].shape[0]
    out = list(inputs[:3])
    for i in range(n_sequences):
        ids, time_, lengths = inputs[3 + 3 * i : 6 + 3 * i]
        out += [ids.expand(n, -1, -1).contiguous(), time_.expand(n, -1, -1).contiguous()]
        out.append(lengths.expand(n).contiguous())
    return tuple(out)


def _export_request(model: CVRModel, out: Path) -> Callable[..., torch.Tensor]:
    """``request.pt2`` of ``model`` (exported through a checkpoint, as ``dhen-cvr export``)."""
    from dhen_cvr.serve.artefact import export_artefact, load_artefact

    run = _checkpoint(model, out / "run")
    art = export_artefact(run, out / "art")
    return load_artefact(art, programs=("request",)).request


def _checkpoint(model: CVRModel, run: Path) -> Path:
    """A run folder holding ``model``'s random-init weights (for export / serving)."""
    from dhen_cvr.config import ExperimentConfig
    from dhen_cvr.data.stats import MinMaxStats
    from dhen_cvr.runtime import TrainProgress, save_checkpoint

    spec = model.data_spec
    n = len(spec.dense)
    stats = MinMaxStats(
        [f.name for f in spec.dense], [0.0] * n, [5.0] * n, [f.log1p for f in spec.dense]
    )
    model.set_dense_stats(stats)
    config = ExperimentConfig.from_dict({"model": model.config.model_dump(mode="json")})
    save_checkpoint(
        run,
        state={"model": model.state_dict(), "optimizer": {}, "rng": {}},
        progress=TrainProgress(),
        dense_stats=stats.to_dict(),
        spec=spec,
        config=config.to_dict(),
    )
    return run


def _bf16_supported() -> bool:
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _variants(
    rows: ServedCVRModel,
    request: ServedCVRModel,
    exported: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    per_row: tuple[torch.Tensor, ...],
    bf16: bool,
) -> dict[str, Callable[[], Any]]:
    """The timed calls at one N (see the module docstring)."""

    def in_bf16() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return request(*inputs)

    out: dict[str, Callable[[], Any]] = {
        "rows": partial(rows, *per_row),
        "request": partial(request, *inputs),
        "exported": partial(exported, *inputs),
    }
    if bf16:
        out["bf16"] = in_bf16
    return out


def _encode(schema: Any, spec: FeatureSpec, body: dict[str, Any]) -> Any:
    """The HTTP-side work of one request: validation and the request encoder."""
    from dhen_cvr.serve.encode import encode_request

    return encode_request(spec, schema.dump(schema.model.model_validate(body)))


def latency(args: argparse.Namespace, work: Path) -> None:
    from dhen_cvr.serve.artefact import served_spec
    from dhen_cvr.serve.encode import encode_request
    from dhen_cvr.serve.schema import RequestSchema

    spec = synthetic_spec(args.seq_len)
    bf16 = _bf16_supported() and not args.no_bf16
    print(f"bf16 autocast: {'yes' if bf16 else 'no (the CPU has no native bf16)'}")
    for name in args.configs:
        model = build_model(name, spec, args.seq_len, torch.device("cpu")).eval()
        served = served_spec(model)
        rows = ServedCVRModel(model, probabilities=True).eval()
        request = ServedCVRModel(model, probabilities=True, one_user=True).eval()
        start = time.perf_counter()
        exported = _export_request(model, work / name)
        print(
            f"\n{name}: sequences cut at {model.sequence_max_lens} items; "
            f"export + load {time.perf_counter() - start:.0f} s"
        )
        header = (
            f"{'N':>5} {'variant':<9} {'p50 ms':>9} {'p99 ms':>9} {'wall p50':>9} "
            f"{'samples':>7}   rows/this p50"
        )
        print(header)
        schema = RequestSchema(served, max(args.candidates))
        for n in args.candidates:
            body = random_request(served, n)
            plain = schema.dump(schema.model.model_validate(body))
            inputs = encode_request(served, plain)
            per_row = _repeated(inputs, len(served.sequences))
            variants = _variants(rows, request, exported, inputs, per_row, bf16)
            variants["encode"] = partial(_encode, schema, served, body)
            with torch.inference_mode():
                for fn in variants.values():
                    fn()  # warm-up
                # repeats per round so that a round takes ~budget per variant
                probe = {k: max(_samples(fn, 1)[0][1], 0.01) for k, fn in variants.items()}
                reps = {
                    k: int(np.clip(args.budget_ms / ms, 1, args.max_repeats))
                    for k, ms in probe.items()
                }
                samples: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
                for _ in range(args.rounds):  # interleaved
                    for k, fn in variants.items():
                        samples[k] += _samples(fn, reps[k])
            base = _pct([c for _, c in samples["rows"]], 50)
            for k, pairs in samples.items():
                cpu, wall = [c for _, c in pairs], [w for w, _ in pairs]
                ratio = "" if k in ("rows", "encode") else f"{base / _pct(cpu, 50):8.2f}x"
                print(
                    f"{n:5d} {k:<9} {_pct(cpu, 50):9.1f} {_pct(cpu, 99):9.1f} "
                    f"{_pct(wall, 50):9.1f} {len(pairs):7d}   {ratio}"
                )


# ---- load test ----------------------------------------------------------------------------
async def _load(url: str, body: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                response = await http.post(url + "/v1/score", json=body)
                ok = response.status_code == 200
                key = str(response.status_code)
            except httpx.HTTPError as err:
                ok, key = False, type(err).__name__
            if ok:
                latencies.append((time.perf_counter() - start) * 1e3)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "latencies": latencies,
    }


def load_test(args: argparse.Namespace, work: Path) -> None:
    import httpx

    from dhen_cvr.serve.artefact import export_artefact, served_spec

    spec = synthetic_spec(args.seq_len)
    model = build_model("tiny", spec, args.seq_len, torch.device("cpu")).eval()
    art = export_artefact(_checkpoint(model, work / "load" / "run"), work / "load" / "art")
    body = random_request(served_spec(model), args.load_candidates, seed=1)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    log = open(work / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dhen_cvr.cli",
            "serve",
            "--artefact",
            str(art),
            "--port",
            str(port),
            "--threads",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start; see {work / 'server.log'}")
            time.sleep(0.3)
        asyncio.run(_load(url, body, 2, 2.0))  # warm-up
        result = asyncio.run(_load(url, body, args.clients, args.load_seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    lat = result["latencies"]
    print(
        f"\nload test: tiny artefact, 1 user x {args.load_candidates} candidates, "
        f"{args.clients} concurrent clients, {result['seconds']:.1f} s, server 1 thread"
    )
    print(
        f"  requests ok {result['requests']}, errors {sum(result['errors'].values())} "
        f"{result['errors'] or ''}"
    )
    if lat:
        print(
            f"  throughput {result['requests'] / result['seconds']:.1f} req/s, latency p50 "
            f"{_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms"
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--candidates", nargs="+", type=int, default=[1, 100, 500, 1000])
    parser.add_argument("--seq-len", type=int, default=100, help="synthetic spec's max_len")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-ms", type=float, default=600.0, help="per variant and round")
    parser.add_argument("--max-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-candidates", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), configs from {CONFIGS}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if not args.skip_latency:
            latency(args, Path(tmp))
        if not args.skip_load:
            load_test(args, Path(tmp))


if __name__ == "__main__":
    main()
