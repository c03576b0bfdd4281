"""Per-step cost of every registered method on the demo world (README's method table).

For each method, a run of the shipped demo world (synthetic-shapes, demo-tiny
CLIP, 16 shots x 14 classes, 50% symmetric noise, cached features) is prepared
by the engine (``prepare_run``), its first epoch's plan is drawn
(``start_epoch``, timed apart: per-epoch work such as OT purification or the
linear probe's whole fit), and then its training step - the trainer's inner
loop: ``training_loss``, backward, optimiser step - is timed on the plan's
batches, every method at the same batch size (``--batch``). Reported: median
CPU milliseconds of this process per step (``time.process_time``, one torch
thread: on a machine shared with other jobs, wall time measures their load too)
and the epoch start's CPU milliseconds. A method that trains
nothing has no step (Tip-Adapter's cost is its cache and val search, made when
the method is built: reported as its build time).

Usage:
  .venv/bin/python benchmarks/method_cost.py            # every method, batch 32, 1 thread
  .venv/bin/python benchmarks/method_cost.py --methods coop tip-adapter-f --steps 20

The last line reads ``RESULT <method>_ms=<x> ...`` (median CPU ms per step).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import ensure_omp_wait_policy, environment, median, print_table, result_line

from visprompt.config import load_run_config
from visprompt.engine.assembly import build_method, prepare_run
from visprompt.engine.optim import build_optimizer
from visprompt.engine.trainer import TrainData, Trainer, epoch_seed
from visprompt.methods import METHOD_REGISTRY, EpochContext, TrainBatch


def demo_config(name: str, batch: int):
    overrides = [
        "backbone.name=demo-tiny",
        "backbone.device=cpu",
        "data.dataset=synthetic-shapes",
        "data.shots=16",
        "data.num_views=10",
        "data.crop_scale=[0.5,1.0]",
        "noise.type=sym",
        "noise.rate=0.5",
        f"method.name={name}",
        f"optim.batch_size={batch}",
        "optim.epochs=10",
    ]
    return load_run_config(None, overrides)


def measure(name: str, batch: int, steps: int) -> dict:
    cfg = demo_config(name, batch)
    quiet = {"progress": False, "log": lambda message: None}
    prep = prepare_run(cfg, **quiet)
    method = prep.method
    started = time.process_time()
    build_method(cfg, prep.backbone, prep.splits.classnames, prep.spec.templates)
    build_ms = 1000 * (time.process_time() - started)
    if not method.trainable:
        return {"method": name, "ms/step": "-", "epoch start ms": "-", "build ms": build_ms}
    labels = torch.tensor(prep.trainset.noise.noisy, dtype=torch.long)
    trainer = Trainer(
        method, TrainData(prep.train_features, labels), cfg.optim, seed=1, progress=False
    )
    optimizer, _ = build_optimizer(method.parameters(), cfg.optim)
    generator = torch.Generator().manual_seed(epoch_seed(1, 0))
    ctx = EpochContext(
        epoch=0,
        num_epochs=cfg.optim.epochs,
        batch_size=batch,
        labels=labels,
        true_labels=None,
        generator=generator,
        predict_train=trainer.predict_train,
    )
    method.eval()
    started = time.process_time()
    plan = method.start_epoch(ctx)
    epoch_ms = 1000 * (time.process_time() - started)
    if not plan.batches:  # fitted when the epoch starts (linear-probe): no step
        return {"method": name, "ms/step": "-", "epoch start ms": epoch_ms, "build ms": build_ms}
    method.train()
    times = []
    batches = (plan.batches * (1 + (steps + 2) // len(plan.batches)))[: steps + 2]
    views = torch.zeros(labels.numel(), dtype=torch.long)
    for i, idx in enumerate(batches):
        feats = prep.train_features.view(views[idx], idx)
        tb = TrainBatch(feats, labels[idx], idx, plan.group[idx])
        started = time.process_time()
        out = method.training_loss(tb)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if i >= 2:  # two warm-up steps
            times.append(1000 * (time.process_time() - started))
    return {
        "method": name,
        "ms/step": median(times),
        "epoch start ms": epoch_ms,
        "build ms": build_ms,
    }


def main() -> None:
    ensure_omp_wait_policy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.methods or METHOD_REGISTRY.names()
    print(environment(torch.device("cpu")), f"threads {args.threads}, batch {args.batch}")
    rows = [measure(n, args.batch, args.steps) for n in names]
    print_table(rows, ["method", "ms/step", "epoch start ms", "build ms"])
    values = {f"{r['method']}_ms": r["ms/step"] for r in rows if r["ms/step"] != "-"}
    print(result_line(**values))


if __name__ == "__main__":
    main()
