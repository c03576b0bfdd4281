"""How close the text encoder inside a visprompt step runs to this machine's matmul peak.

In one process:

1. the matrix-multiply peak of this machine, measured now: ``torch.mm`` on the
   shapes the text tower uses ((N x 512) @ (512 x 2048), (N x 2048) @ (2048 x
   512), N = a step's token rows) and a large square product; best median
   GFLOP/s over the shapes, measured before and after the step timings (the
   larger is used: the machine is shared and its load changes). fp32 on CPU;
   with ``--device cuda --amp`` bf16 and the GPU's bf16 peak;
2. one visprompt training step (ViT-B/16 shapes, random weights, cached
   features, the engine's shared-prefix text encoding and chunk size): its
   FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (every matmul,
   forward and backward, including the recomputation of checkpointed chunks:
   *executed* FLOPs) and again without chunks (*useful* FLOPs: no
   recomputation), and its median time;
3. the same for the text encoder alone (the step's per-image prompts, forward
   and backward), to show what the rest of the step costs.

The step's FLOPs are almost all the text encoder's (the prompt module and the
loss add well under 1 %), so ``step FLOPs / step time`` is the text encoder's
achieved rate inside the step, slightly understated because the step's other
work is in the time.

Usage:
  .venv/bin/python benchmarks/throughput_limit.py            # B = 16, K = 101
  .venv/bin/python benchmarks/throughput_limit.py --quick    # B = 4 (< 3 min)
  .venv/bin/python benchmarks/throughput_limit.py --device cuda --amp --batch 32

The last line reads ``RESULT fraction_of_peak=<executed step GFLOP/s / peak>
useful_fraction=<useful / peak> step_gflops=<x> peak_gflops=<x>``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    build_backbone,
    class_names,
    default_chunk_size,
    ensure_omp_wait_policy,
    environment,
    make_inputs,
    make_method,
    median,
    new_optimizer,
    pick_device,
    print_table,
    result_line,
    run_step,
    synchronize,
)
from torch.utils.flop_counter import FlopCounterMode

from visprompt.engine.evaluate import autocast_context
from visprompt.methods import FeatureBatch


def matmul_peak(device: torch.device, dtype: torch.dtype, rows: int, reps: int) -> dict:
    """Best median GFLOP/s of ``torch.mm`` over text-tower shapes and a square product."""
    big = 8192 if device.type == "cuda" else 2048
    shapes = [(rows, 512, 2048), (rows, 2048, 512), (big, big, big)]
    best = {"gflops": 0.0}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            times.append(time.perf_counter() - start)
        rate = 2 * m * k * n / median(times) / 1e9
        if rate > best["gflops"]:
            best = {"gflops": rate, "shape": f"({m}x{k})@({k}x{n})"}
    return best


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 4, fewer repetitions")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=101)
    parser.add_argument("--chunk-size", type=int, default=default_chunk_size())
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast; bf16 matmul peak")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    ensure_omp_wait_policy()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch = 4
    reps = args.reps or (20 if device.type == "cuda" else (2 if args.quick else 3))
    precision = "amp" if args.amp else "fp32"
    dtype = torch.bfloat16 if args.amp else torch.float32
    print(f"throughput_limit: {environment(device)}")
    print(
        f"visprompt step, ViT-B/16 shapes, B={args.batch}, K={args.classes}, "
        f"chunk_size={args.chunk_size}, precision {precision}",
        flush=True,
    )

    backbone = build_backbone("ViT-B-16", device)
    method, label = make_method("visprompt", backbone, class_names(args.classes), args.chunk_size)
    inputs = make_inputs(backbone, args.batch, args.classes, views=1)
    optimizer = new_optimizer(method)
    rows_per_step = args.batch * (1 + 16 + 5 * args.classes)  # about the tokens of a step
    peak_before = matmul_peak(device, dtype, rows_per_step, 5)
    print(f"  matmul peak before: {peak_before['gflops']:.1f} GFLOP/s", flush=True)

    def step():
        run_step(method, optimizer, inputs, 0, False, args.batch, precision)

    def set_chunk(chunk):
        method.backbone.with_engine(text_encoding=method.backbone.text_encoding, chunk_size=chunk)

    # Text encoder alone: the step's per-image contexts, forward and backward.
    with torch.no_grad(), autocast_context(device, precision):
        contexts, _ = method.image_contexts(FeatureBatch(image=inputs.cached[0]))
    cotangent = torch.randn(args.batch, args.classes, backbone.embed_dim, device=device)

    def text_alone():
        ctx = contexts.detach().requires_grad_(True)
        with autocast_context(device, precision):
            feats = method.prompt.per_image_text_features(ctx)
        (feats.float() * cotangent).sum().backward()
        synchronize(device)

    flops = {}
    for name, fn in (("step", step), ("text encoder alone", text_alone)):
        set_chunk(None)
        flops[(name, "useful")] = count_flops(fn)
        set_chunk(args.chunk_size)
        flops[(name, "executed")] = count_flops(fn)

    times = {}
    for name, fn in (("step", step), ("text encoder alone", text_alone)):
        fn()  # warm-up
        samples = []
        for _ in range(reps):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples.append(time.perf_counter() - start)
        times[name] = median(samples)
        print(f"  {name}: {times[name]:.3f} s (median of {reps})", flush=True)

    peak_after = matmul_peak(device, dtype, rows_per_step, 5)
    print(f"  matmul peak after: {peak_after['gflops']:.1f} GFLOP/s", flush=True)
    peak = max(peak_before, peak_after, key=lambda p: p["gflops"])
    rows = []
    for name in ("step", "text encoder alone"):
        for kind in ("executed", "useful"):
            rate = flops[(name, kind)] / times[name] / 1e9
            rows.append(
                {
                    "what": name,
                    "flops": kind,
                    "GFLOP": flops[(name, kind)] / 1e9,
                    "seconds": times[name],
                    "GFLOP/s": rate,
                    "of_peak": rate / peak["gflops"],
                }
            )
    rows.append(
        {
            "what": f"matmul peak {peak['shape']}",
            "flops": str(dtype).replace("torch.", ""),
            "GFLOP/s": peak["gflops"],
            "of_peak": 1.0,
        }
    )
    print()
    print(f"method: {label}")
    print_table(rows, ["what", "flops", "GFLOP", "seconds", "GFLOP/s", "of_peak"])
    print(f"after: {environment(device)}")
    step_rate = flops[("step", "executed")] / times["step"] / 1e9
    useful_rate = flops[("step", "useful")] / times["step"] / 1e9
    print(
        result_line(
            fraction_of_peak=step_rate / peak["gflops"],
            useful_fraction=useful_rate / peak["gflops"],
            step_gflops=step_rate,
            peak_gflops=peak["gflops"],
        )
    )


if __name__ == "__main__":
    main()
