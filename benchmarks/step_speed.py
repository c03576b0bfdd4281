"""One training step of coop and visprompt: reference-style against ours.

Per architecture (ViT-B/16 and RN50 shapes, random weights), class count K and
method, the same method weights, images and labels go through these paths:

  reference      the reference implementations' step: the frozen image tower on
                 freshly augmented images of the batch, 77-token prompts, all the
                 prompts of a text-encoder call in one batch (open_clip's text
                 transformer), backward, SGD step
  77+cache       (with --levers) the same with cached image features
  truncated      cached features, prompts cut after their end-of-text token,
                 chunks of engine.chunk_size sequences (engine.text_encoding =
                 truncated): the intermediate variant
  ours           cached features, shared-prefix text encoding, chunks (the
                 engine's defaults)
  ours-nochunk   ours with chunk_size None (no recomputation in the backward)

For per-image prompts the reference's one-call text batch is B x K x 77 tokens,
whose backward graph needs ~25 MB per prompt (about 40 GB at B = 16, K = 101;
this machine has 23 GB), so its prompts are encoded ``--ref-seqs`` at a time
(whole images: all K prompts of m = ref-seqs // K images per call) and the
gradients accumulated: the same arithmetic, in matrix products of thousands of
rows, so the reference loses no speed by it. Shared prompts (coop) are one call.
VisPrompt's gate reads the shared prompts' text features once per step (no
gradient); the reference computes them once per step too.

Reported: median wall seconds per step, each path's speed-up over the
reference, the same in CPU seconds of this process (less sensitive to other
processes' load), the image tower's share of the reference step, and the
relative difference (max |a - b| / max |a|) of the logits and of the gradients
of all trainable parameters between the reference and each of our paths at the
first step (same augmented view, fp32). Runs with OMP_WAIT_POLICY=PASSIVE
unless the variable is set (see ``_common.ensure_omp_wait_policy``).

Usage:
  .venv/bin/python benchmarks/step_speed.py            # B = 16, K in {10, 101}, both archs
  .venv/bin/python benchmarks/step_speed.py --quick    # ViT-B/16, K = 101, B = 2 (< 3 min)
  .venv/bin/python benchmarks/step_speed.py --device cuda --amp

The last line reads ``RESULT visprompt_speedup=<x> coop_speedup=<x> max_rel_diff=<v>``
(wall-clock speed-ups of ours at ViT-B/16, K = 101 and the batch size run; the
largest difference of any of our paths from the reference in fp32).
"""

from __future__ import annotations

import argparse
import contextlib

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
    pick_device,
    print_table,
    reference_text_encoding,
    rel_diff,
    result_line,
    time_path,
)


@contextlib.contextmanager
def text_encoding(backbone, mode: str):
    before = backbone.text_encoding
    backbone.text_encoding = mode
    try:
        yield None
    finally:
        backbone.text_encoding = before


def bench_one(args, backbone, arch: str, k: int, name: str, rows: list, checks: list) -> dict:
    names = class_names(k)
    chunk = args.chunk_size
    method, label = make_method(name, backbone, names, chunk)
    initial = {key: v.detach().clone() for key, v in method.state_dict().items()}
    reps_ref = args.ref_reps
    inputs = make_inputs(backbone, args.batch, k, views=max(reps_ref, args.reps) + 1)
    micro = (
        args.batch
        if not method.config.requirements().per_image_prompts
        else max(1, args.ref_seqs // k)
    )
    precision = "amp" if args.amp else "fp32"

    def path(live, micro_batch, reps, warm, setup, chunk_size):
        method.backbone.with_engine(
            text_encoding=method.backbone.text_encoding, chunk_size=chunk_size
        )
        try:
            return time_path(
                method, initial, inputs, reps, live, micro_batch, precision, warm, setup
            )
        finally:
            method.backbone.with_engine(
                text_encoding=method.backbone.text_encoding, chunk_size=chunk
            )

    def reference():
        return reference_text_encoding(backbone)

    def encoding(mode):
        return lambda: text_encoding(backbone, mode)

    b = args.batch
    runs = {"reference": path(True, micro, reps_ref, False, reference, None)}
    if args.levers:
        runs["77+cache"] = path(False, micro, reps_ref, False, reference, None)
    runs["truncated"] = path(False, b, args.mid_reps, False, encoding("truncated"), chunk)
    runs["ours"] = path(False, b, args.reps, True, encoding("shared-prefix"), chunk)
    runs["ours-nochunk"] = path(False, b, args.reps, True, encoding("shared-prefix"), None)
    ref_results, ref_first = runs["reference"]
    ref_time = median([r.seconds for r in ref_results])
    ref_cpu = median([r.cpu_seconds for r in ref_results])
    image_time = median([r.image_seconds for r in ref_results])
    out = {}
    for path_name, (results, first) in runs.items():
        t = median([r.seconds for r in results])
        cpu = median([r.cpu_seconds for r in results])
        row = {
            "arch": arch,
            "method": label,
            "K": k,
            "B": args.batch,
            "path": path_name,
            "reps": len(results),
            "s/step": t,
            "speedup": ref_time / t,
            "cpu_s": cpu,
            "cpu_speedup": ref_cpu / cpu,
        }
        if path_name == "reference":
            per_call = micro * k if method.config.requirements().per_image_prompts else k
            row["note"] = f"image tower {image_time:.2f}s; text calls of {per_call} prompts"
        else:
            dl = rel_diff(ref_first.logits, first.logits)
            dg = rel_diff(ref_first.grads, first.grads)
            row["logit_diff"], row["grad_diff"] = dl, dg
            if not args.amp:
                checks.append(max(dl, dg))
        rows.append(row)
        out[path_name] = t
        print(
            f"  {arch} K={k} {label:10s} {path_name:13s} {t:8.3f} s/step x{ref_time / t:6.1f}",
            flush=True,
        )
    return {"speedup": ref_time / out["ours"], "label": label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ViT-B/16, K = 101, B = 2, few reps")
    parser.add_argument("--arch", default="ViT-B-16,RN50")
    parser.add_argument("--classes", default="10,101")
    parser.add_argument("--methods", default="coop,visprompt")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=None, help="timed steps of our paths")
    parser.add_argument("--ref-reps", type=int, default=None, help="timed reference steps")
    parser.add_argument("--mid-reps", type=int, default=None, help="timed truncated steps")
    parser.add_argument("--ref-seqs", type=int, default=128, help="77-token prompts per call")
    parser.add_argument("--chunk-size", type=int, default=default_chunk_size())
    parser.add_argument("--levers", action="store_true", help="also time 77-token + cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    ensure_omp_wait_policy()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    if args.quick:
        args.arch, args.classes, args.batch = "ViT-B-16", "101", 2
    args.reps = args.reps or (20 if gpu else (3 if args.quick else 5))
    args.ref_reps = args.ref_reps or (5 if gpu else 1)
    args.mid_reps = args.mid_reps or (10 if gpu else (1 if args.quick else 2))
    print(f"step_speed: {environment(device)}")
    print(
        f"B={args.batch}, chunk_size={args.chunk_size}, reference text calls of "
        f"{args.ref_seqs} prompts max, precision {'amp (bf16)' if args.amp else 'fp32'}",
        flush=True,
    )
    rows: list[dict] = []
    checks: list[float] = []
    speedups: dict[str, float] = {}
    for arch in args.arch.split(","):
        backbone = build_backbone(arch, device)
        for k in (int(x) for x in args.classes.split(",")):
            for name in args.methods.split(","):
                res = bench_one(args, backbone, arch, k, name, rows, checks)
                if arch == "ViT-B-16" and k == 101:
                    speedups[name] = res["speedup"]
        del backbone
    print()
    print_table(
        rows,
        [
            "arch",
            "method",
            "K",
            "B",
            "path",
            "reps",
            "s/step",
            "speedup",
            "cpu_s",
            "cpu_speedup",
            "logit_diff",
            "grad_diff",
            "note",
        ],
    )
    print(f"\nafter: {environment(device)}")
    print(
        result_line(
            visprompt_speedup=speedups.get("visprompt", float("nan")),
            coop_speedup=speedups.get("coop", float("nan")),
            max_rel_diff=max(checks) if checks else float("nan"),
        )
    )


if __name__ == "__main__":
    main()
