"""Seconds per training epoch of whole runs, side by side, on one small setup.

Measures what a user waits for: full ``train_run`` epochs (purification pass,
batches, optimiser; test evaluation excluded) on the generated
``synthetic-shapes`` task (14 classes, 16 shots = 224 training images) with the
shipped ``demo-tiny`` backbone (or ``--backbone tiny-vit``):

* CoOp with the frozen-feature cache vs ``--no-cache`` (the reference behaviour:
  the image encoder runs on freshly augmented images every step);
* CoOp, NLPrompt and VisPrompt with the cache (one text pass of K prompts per
  step vs B*K per-image prompts plus an N*K purification pass).

The first epoch (warm-up, cold caches) is dropped; the median of the rest is
reported. Feature extraction happens before the first epoch and is not timed
(it is reported separately as ``extract_s``).

    python benchmarks/epoch_speed.py [--quick] [--backbone demo-tiny] [--epochs 6]

Last line: ``RESULT coop_cache_s=... coop_nocache_s=... cache_speedup=...
nlprompt_s=... visprompt_s=...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from visprompt.config import load_run_config
from visprompt.engine.run import train_run


def run(method: str, args, out: Path, use_cache: bool) -> tuple[float, float]:
    overrides = [
        f"backbone.name={args.backbone}",
        "backbone.device=cpu",
        "data.dataset=synthetic-shapes",
        "data.shots=16",
        "noise.type=sym",
        "noise.rate=0.5",
        f"method.name={method}",
        f"optim.epochs={args.epochs}",
        "optim.batch_size=16",
        f"use_cache={'true' if use_cache else 'false'}",
    ]
    cfg = load_run_config(None, overrides)
    epochs: list[float] = []
    started = time.perf_counter()
    train_run(
        cfg,
        out / f"{method}-{use_cache}",
        progress=False,
        log=lambda message: None,
        on_epoch=lambda m: epochs.append(m["seconds"]),
    )
    total = time.perf_counter() - started
    return statistics.median(epochs[1:] or epochs), total - sum(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="demo-tiny")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="3 epochs per run")
    args = parser.parse_args()
    if args.quick:
        args.epochs = 3
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VISPROMPT_CACHE"] = str(Path(tmp) / "cache")
        out = Path(tmp)
        rows = []
        for method, cache in (
            ("coop", True),
            ("coop", False),
            ("nlprompt", True),
            ("visprompt", True),
        ):
            per_epoch, other = run(method, args, out, cache)
            rows.append((method, cache, per_epoch, other))
    print(
        f"backbone {args.backbone}, synthetic-shapes 14 classes x 16 shots, batch 16, "
        f"{args.epochs} epochs, torch threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'method':10s} {'cache':6s} {'s/epoch':>9s} {'setup+eval s':>13s}")
    for method, cache, per_epoch, other in rows:
        print(f"{method:10s} {str(cache):6s} {per_epoch:9.3f} {other:13.1f}")
    coop_cache, coop_live = rows[0][2], rows[1][2]
    print(
        f"RESULT coop_cache_s={coop_cache:.4f} coop_nocache_s={coop_live:.4f} "
        f"cache_speedup={coop_live / coop_cache:.1f} nlprompt_s={rows[2][2]:.4f} "
        f"visprompt_s={rows[3][2]:.4f}"
    )


if __name__ == "__main__":
    main()
