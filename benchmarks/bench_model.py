"""Model throughput: forward+backward and forward-only examples/s, float32 vs bfloat16.

    python -m benchmarks.bench_model [--seq-len 100] [--batch-size 256] [--configs tiny paper]
    python -m benchmarks.bench_model --profile [--config paper]

For ``configs/tiny.yaml`` and ``configs/paper.yaml`` on the synthetic world's feature spec
(every sequence full, cut to ``--seq-len``), it times a training step (forward, loss on the
logits and the SSL outputs, backward; no optimiser) and an inference forward (eval mode,
no SSL outputs), in float32 and under bfloat16 autocast. FLOPs are counted with
``torch.utils.flop_counter`` on the same batch (matmuls and attention, the CPU attention
kernels included, causal attention counted as half; backward included for the training
step); achieved GFLOP/s is compared with a plain ``torch.matmul`` peak measured in the
same run, per dtype (on CPU oneDNN's fp32 matmul is printed beside it: on some CPUs it is
far above MKL's, which ``torch.matmul`` uses). Freed memory is retained in the process as
in training (``train.retain_cpu_memory``; ``--no-retain-cpu-memory`` for glibc's defaults). ``--profile`` runs ``torch.profiler`` over training
steps and prints the top ops and the share of step time spent in embedding backward,
padding/mask building and attention.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from dhen_cvr.data.batch import NUM_TIME_FEATURES, Batch, SequenceBatch
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.model import sequence as sequence_module
from dhen_cvr.model.config import load_model_config
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.runtime import retain_freed_cpu_memory

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def synthetic_spec(seq_len: int) -> FeatureSpec:
    from dhen_cvr.data.synth.config import WorldConfig, world_spec

    return world_spec(WorldConfig(max_seq_len=seq_len))


def build_model(name: str, spec: FeatureSpec, seq_len: int, device: torch.device) -> CVRModel:
    config = load_model_config(CONFIGS / f"{name}.yaml")
    cap = min(seq_len, config.sequence.max_len_cap or seq_len)
    config = config.model_copy(
        update={"sequence": config.sequence.model_copy(update={"max_len_cap": cap})}
    )
    torch.manual_seed(0)
    return CVRModel(spec, config).to(device)


def full_batch(model: CVRModel, batch_size: int, device: torch.device, seed: int = 0) -> Batch:
    """Random ids and values; every sequence holds its full (capped) length."""
    g = torch.Generator().manual_seed(seed)
    spec, B = model.data_spec, batch_size
    seqs = {}
    for s in spec.sequences:
        T = model.sequence_max_lens.get(s.name, s.max_len)
        seqs[s.name] = SequenceBatch(
            ids={f.name: torch.randint(1, f.num_rows, (B, T), generator=g) for f in s.fields},
            time=torch.rand(B, T, NUM_TIME_FEATURES, generator=g) * 10,
            mask=torch.ones(B, T, dtype=torch.bool),
            lengths=torch.full((B,), T),
        )
    H = len(spec.labels)
    batch = Batch(
        dense=torch.rand(B, len(spec.dense), generator=g),
        pretrained={f.name: torch.randn(B, f.dim, generator=g) for f in spec.pretrained},
        categorical={
            f.name: torch.randint(1, f.num_rows, (B,), generator=g) for f in spec.categorical
        },
        sequences=seqs,
        labels=torch.zeros(B, H),
        label_mask=torch.ones(B, H),
        inclusion_prob=torch.ones(B),
        weight=torch.ones(B),
    )
    return batch.to(device)


def _autocast(device: torch.device, dtype: torch.dtype) -> Any:
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(model: CVRModel, batch: Batch, device: torch.device, dtype: torch.dtype) -> None:
    model.train()
    with _autocast(device, dtype):
        out = model(batch)
        loss = out.logits.float().sum()
        for enc in out.sequences.values():
            loss = loss + enc.hidden.float().square().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def forward_step(model: CVRModel, batch: Batch, device: torch.device, dtype: torch.dtype) -> None:
    model.eval()
    with torch.inference_mode(), _autocast(device, dtype):
        model.encode(batch.dense, batch.pretrained, batch.categorical, batch.sequences, ssl=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(
    fn: Callable[[], None], device: torch.device, warmup: int, repeats: int
) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_attention_flops(
    query: Any, key: Any, value: Any, dropout_p: float = 0.0, is_causal: bool = False,
    *args: Any, **kwargs: Any
) -> int:  # fmt: skip
    """CPU flash attention forward: torch's SDPA count (``QK^T`` and ``AV``), halved when
    causal (the kernel skips the masked blocks; counting them would flatter GFLOP/s)."""
    flops = flop_counter.sdpa_flop_count(query, key, value)
    return flops // 2 if is_causal else flops


def _cpu_attention_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, out: Any, logsumexp: Any,
    dropout_p: float = 0.0, is_causal: bool = False, *args: Any, **kwargs: Any
) -> int:  # fmt: skip
    flops = flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)
    return flops // 2 if is_causal else flops


# torch's FLOP counter knows the CUDA attention kernels only; without these the CPU count
# leaves out every sequence encoder's attention matmuls.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        _cpu_attention_backward_flops
    ),
}


def count_flops(fn: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of plain square ``torch.matmul`` (best of n = 256, 512, 1024): the roofline
    the model's achieved GFLOP/s is compared with."""
    best = 0.0
    for n in (256, 512, 1024):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def call(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            torch.matmul(a, b)

        seconds = seconds_per_call(call, device, warmup=2, repeats=5)
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def onednn_matmul_peak() -> float | None:
    """GFLOP/s of the same square fp32 products through oneDNN (the kernel library behind
    torch's CPU bf16 matmuls), where this torch build has it; None otherwise."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    best = 0.0
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)

        def call(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            op(a, b, None, "none", [], "")

        seconds = seconds_per_call(call, torch.device("cpu"), warmup=2, repeats=5)
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def run_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Time every config x dtype x mode, then print them against the matmul peak, which is
    measured before and after the model timings (the better of the two: a noisy neighbour
    during one of them lowers the roofline, not the reported fraction's honesty)."""
    spec = synthetic_spec(args.seq_len)
    dtypes = {name: dt for name, dt in DTYPES.items() if name in args.dtypes}
    peaks = {name: matmul_peak(device, dt) for name, dt in dtypes.items()}
    results: dict[tuple[str, str, str], float] = {}
    flops_per_example: dict[tuple[str, str, str], float] = {}
    for config in args.configs:
        model = build_model(config, spec, args.seq_len, device)
        batch = full_batch(model, args.batch_size, device)
        for dtype_name, dtype in dtypes.items():
            for mode, step in (("fwd+bwd", train_step), ("forward-only", forward_step)):

                def call(
                    step: Callable[..., None] = step,
                    dtype: torch.dtype = dtype,
                    model: CVRModel = model,
                    batch: Batch = batch,
                ) -> None:
                    step(model, batch, device, dtype)

                key = (config, dtype_name, mode)
                flops_per_example[key] = count_flops(call) / args.batch_size
                seconds = seconds_per_call(call, device, args.warmup, args.repeats)
                results[key] = args.batch_size / seconds
    peaks = {name: max(peaks[name], matmul_peak(device, dt)) for name, dt in dtypes.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"sequences of {args.seq_len} items (all full)")  # fmt: skip
    for name, peak in peaks.items():
        print(f"torch.matmul peak ({name}): {peak:8.1f} GFLOP/s (best of before and after)")
    onednn = onednn_matmul_peak() if device.type == "cpu" and "float32" in peaks else None
    if onednn is not None:
        print(f"oneDNN matmul (float32):    {onednn:8.1f} GFLOP/s "
              f"({onednn / peaks['float32']:.2f}x torch.matmul; not the % peak below)")  # fmt: skip
    header = f"{'config':<7} {'dtype':<9} {'mode':<13} {'ex/s':>9} {'GFLOP/ex':>9} {'GFLOP/s':>8} {'% peak':>7}"
    print(header)
    print("-" * len(header))
    for (config, dtype_name, mode), ex_s in results.items():
        flops = flops_per_example[(config, dtype_name, mode)]
        gflops = flops * ex_s / 1e9
        print(
            f"{config:<7} {dtype_name:<9} {mode:<13} {ex_s:9.1f} {flops / 1e9:9.3f} "
            f"{gflops:8.1f} {gflops / peaks[dtype_name]:7.1%}"
        )
    if {"float32", "bfloat16"} <= set(args.dtypes):
        print("\nbfloat16 autocast speed-up over float32 (same run):")
        for config in args.configs:
            for mode in ("fwd+bwd", "forward-only"):
                ratio = results[(config, "bfloat16", mode)] / results[(config, "float32", mode)]
                print(f"  {config:<7} {mode:<13} {ratio:5.2f}x")


@contextmanager
def _labelled_mask_building() -> Iterator[None]:
    """Wrap the sequence module's padding/mask helpers in profiler ranges (benchmark only)."""
    originals = {
        name: getattr(sequence_module, name) for name in ("recent_window", "key_padding_mask")
    }

    def labelled(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(f"mask_building::{name}"):
                return fn(*args, **kwargs)

        return wrapper

    try:
        for name, fn in originals.items():
            setattr(sequence_module, name, labelled(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(sequence_module, name, fn)


def run_profile(args: argparse.Namespace, device: torch.device) -> None:
    spec = synthetic_spec(args.seq_len)
    model = build_model(args.config, spec, args.seq_len, device)
    batch = full_batch(model, args.batch_size, device)
    dtype = DTYPES[args.dtypes[0]]
    if args.bidirectional:
        seq_cfg = model.config.sequence.model_copy(update={"causal": False})
        cfg = model.config.model_copy(update={"sequence": seq_cfg})
        torch.manual_seed(0)
        model = CVRModel(spec, cfg).to(device)
    for _ in range(args.warmup):
        train_step(model, batch, device, dtype)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with _labelled_mask_building(), torch.profiler.profile(activities=activities) as prof:
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            train_step(model, batch, device, dtype)
        _sync(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))

    def total_us(match: Callable[[str], bool]) -> float:
        return sum(e.cpu_time_total for e in events if match(e.key))

    shares = {
        "embedding backward": total_us(lambda k: k == "aten::embedding_backward"),
        "padding/mask building": total_us(lambda k: k.startswith("mask_building::")),
        "attention (fwd)": total_us(lambda k: k == "aten::scaled_dot_product_attention"),
        "attention (bwd)": total_us(
            lambda k: k.startswith("aten::_scaled_dot_product") and k.endswith("_backward")
        ),
    }
    step_us = wall / args.repeats * 1e6
    mode = "bidirectional" if args.bidirectional else "causal"
    print(f"\n{args.config}, {args.dtypes[0]}, {mode} sequence encoders, batch {args.batch_size}, "
          f"{args.seq_len} items: {step_us / 1e3:.1f} ms per training step")  # fmt: skip
    for label, us in shares.items():
        share = us / (step_us * args.repeats)
        print(f"  {label:<24} {us / args.repeats / 1e3:8.1f} ms/step  {share:6.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=100, help="items per sequence")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--profile", action="store_true", help="torch.profiler breakdown")
    parser.add_argument("--config", default="paper", help="config for --profile")
    parser.add_argument("--bidirectional", action="store_true", help="--profile the MLM mode")
    parser.add_argument("--top", type=int, default=15, help="ops listed by --profile")
    parser.add_argument(
        "--no-retain-cpu-memory", action="store_true", help="glibc's default allocator settings"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = not args.no_retain_cpu_memory and retain_freed_cpu_memory()
    print(f"freed CPU memory retained in the process: {'yes' if retained else 'no'}")
    device = torch.device(args.device)
    if args.profile:
        run_profile(args, device)
    else:
        run_benchmark(args, device)


if __name__ == "__main__":
    main()
