"""Peak memory of one visprompt training step as K grows, with and without chunking.

For every K in ``--classes`` (default 10, 101, 397: Food-101's names, repeated
for K > 101 so that prompt lengths do not change with K) and chunk size in
{``--chunk-size`` (default 256), none}, plus ``--chunked-only`` K (default 1000)
with chunks only,
a fresh child process builds ViT-B/16 (random weights), the visprompt method
and cached image features, then runs one training step (forward, backward, SGD step) with
the engine's default shared-prefix text encoding.

How memory is measured (torch's CPU allocator keeps no statistics, and
``tracemalloc`` sees only Python's own allocations):

* CPU: the kernel's high-water mark of the child's resident memory. Just
  before the step the mark is reset to the current resident size (writing
  ``5`` to ``/proc/self/clear_refs``); the step's peak is ``VmHWM`` after the
  step minus ``VmRSS`` before it: the extra memory the step needed on top of
  the model, data and method. Where the reset is not allowed, the difference
  of ``ru_maxrss`` is used (a lower bound) and the table says so. The child
  runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so glibc serves every block of
  64 KiB or more with its own mapping and returns it to the kernel when freed:
  resident memory then follows live tensors instead of including heap pages
  that malloc keeps after a free (with glibc's adaptive threshold the same
  step reads up to ~2x higher, and higher the more blocks it runs).
* CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, minus the memory allocated before the step.

With chunking, the text encoder runs blocks of at most ``chunk_size``
(image, class) sequences and recomputes all but the last in the backward pass,
so the peak is set by the block, not by B x K: it must stay flat as K grows.

Usage:
  .venv/bin/python benchmarks/memory.py            # B = 4, K in {10, 101, 397} (+1000 chunked)
  .venv/bin/python benchmarks/memory.py --quick    # B = 2, K in {10, 101, 397} (< 3 min)
  .venv/bin/python benchmarks/memory.py --device cuda --amp --batch 32

The peak follows the largest block (at most ``chunk_size`` sequences: whole
images while a chunk holds all K prompts, else one image's classes cut into
runs), so ``largest_block`` is printed with it.

The last line reads ``RESULT chunked_flat_ratio=<chunked peak at the largest K /
at K=101> unchunked_ratio=<the same without chunks> block_ratio=<largest block
at the largest K / at K=101> chunked_peak_mb=<x> unchunked_peak_mb=<x> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child(args: argparse.Namespace) -> dict:
    import torch
    from _common import (
        StepInputs,
        build_backbone,
        class_names,
        make_method,
        new_optimizer,
        run_step,
    )

    device = torch.device(args.device)
    backbone = build_backbone("ViT-B-16", device)
    chunk = None if args.chunk == 0 else args.chunk
    method, label = make_method("visprompt", backbone, class_names(args.k), chunk)
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(args.batch, backbone.embed_dim, generator=g))
    labels = torch.randint(args.k, (args.batch,), generator=g)
    inputs = StepInputs(images=torch.empty(0), labels=labels.to(device), cached=[feats.to(device)])
    optimizer = new_optimizer(method)
    precision = "amp" if args.amp else "fp32"
    from visprompt.backbone.text_encoder import plan_blocks

    images, classes = plan_blocks(args.batch, args.k, chunk)
    out = {
        "method": label,
        "k": args.k,
        "chunk": chunk,
        "batch": args.batch,
        "blocks": len(images) * len(classes),
        "largest_block": max(images) * max(classes),
    }
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run_step(method, optimizer, inputs, 0, False, args.batch, precision)
        out["seconds"] = time.perf_counter() - start
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        out["how"] = "cuda max_memory_allocated"
        return out
    rss_before = _status_kb("VmRSS")
    exact = _reset_high_water_mark()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run_step(method, optimizer, inputs, 0, False, args.batch, precision)
    out["seconds"] = time.perf_counter() - start
    if exact:
        out["peak_mb"] = (_status_kb("VmHWM") - rss_before) / 1024
        out["how"] = "VmHWM - VmRSS"
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_mb"] = (after - maxrss_before) / 1024
        out["how"] = "ru_maxrss difference (lower bound)"
    return out


def run_child(args: argparse.Namespace, k: int, chunk: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--k",
        str(k),
        "--chunk",
        str(chunk),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
    ]
    if args.amp:
        cmd.append("--amp")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        MALLOC_MMAP_THRESHOLD_="65536",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child failed (K={k}, chunk={chunk}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 2")
    parser.add_argument("--classes", default="10,101,397")
    parser.add_argument(
        "--chunked-only", default="1000", help="more K, chunked only (no unchunked run)"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return

    from _common import (
        ensure_omp_wait_policy,
        environment,
        pick_device,
        print_table,
        result_line,
    )

    ensure_omp_wait_policy()

    device = pick_device(args.device)
    if args.quick:
        args.batch, args.chunked_only = 2, ""
    print(f"memory: {environment(device)}")
    print(
        f"visprompt step, ViT-B/16 shapes, B={args.batch}, chunk_size={args.chunk_size}, "
        f"precision {'amp (bf16)' if args.amp else 'fp32'}",
        flush=True,
    )
    ks = [int(x) for x in args.classes.split(",")]
    more = [int(x) for x in args.chunked_only.split(",") if x]
    rows = []
    peaks: dict[tuple[int, bool], float] = {}
    blocks: dict[int, int] = {}
    for k in ks + more:
        for chunked in (True, False) if k in ks else (True,):
            res = run_child(args, k, args.chunk_size if chunked else 0)
            seqs = args.batch * k
            peaks[(k, chunked)] = res["peak_mb"]
            if chunked:
                blocks[k] = res["largest_block"]
            rows.append(
                {
                    "K": k,
                    "B": args.batch,
                    "sequences": seqs,
                    "chunk_size": args.chunk_size if chunked else "none",
                    "blocks": res["blocks"],
                    "largest_block": res["largest_block"],
                    "peak_mb": res["peak_mb"],
                    "mb_per_1k_seq": 1000 * res["peak_mb"] / seqs,
                    "seconds": res["seconds"],
                    "method": res["method"],
                    "measured_by": res["how"],
                }
            )
            print(
                f"  K={k:4d} chunk={rows[-1]['chunk_size']!s:5s} peak {res['peak_mb']:8.1f} MB"
                f"  ({res['seconds']:.1f} s)",
                flush=True,
            )
    print()
    print_table(
        rows,
        [
            "K",
            "B",
            "sequences",
            "chunk_size",
            "blocks",
            "largest_block",
            "peak_mb",
            "mb_per_1k_seq",
            "seconds",
            "method",
        ],
    )
    print(f"memory measured by: {rows[0]['measured_by']}")
    print(f"after: {environment(device)}")
    ref_k = 101 if 101 in ks else ks[0]
    big = max(ks)
    extra = {f"chunked_peak_mb_k{k}": peaks[(k, True)] for k in more}
    print(
        result_line(
            chunked_flat_ratio=peaks[(big, True)] / peaks[(ref_k, True)],
            unchunked_ratio=peaks[(big, False)] / peaks[(ref_k, False)],
            block_ratio=blocks[big] / blocks[ref_k],
            chunked_peak_mb=peaks[(big, True)],
            unchunked_peak_mb=peaks[(big, False)],
            k=big,
            batch=args.batch,
            **extra,
        )
    )


if __name__ == "__main__":
    main()
