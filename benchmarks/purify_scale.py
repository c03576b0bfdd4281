"""OT purification at Food-101N scale: time, peak memory and split quality.

Synthetic but fixed (seed 0): N = 310,009 training samples (Food-101N's size),
K = 101 classes, model probabilities peaked on the true class with a
confusable neighbour class, and ``--noise`` of the given labels flipped to a
uniformly chosen other class. Each configuration runs in a fresh child process
that loads the data from a temporary .npy file; its memory figure is the
resident high-water mark during the call (VmHWM, reset just before it through
/proc/self/clear_refs) minus the resident memory just before it, i.e. what the
solve needs on top of its input (torch's CPU allocator keeps no statistics;
where /proc is missing the ru_maxrss delta, a lower bound, is used).

Rows:
  global          purify(scope="global"), float32, default settings (reg 0.01,
                  at most 1000 iterations, tol 1e-6)
  batch           purify(scope="batch", batch_size=16), all blocks batched
  global-f32 /    global in float32 and in float64 on the first ``--f64-n``
  global-f64        samples, to check that float32 gives the same split
  patience        global with ``label_patience`` on that subset (iterations
                  saved, clean verdicts changed against global-f32)
  pot             POT ot.sinkhorn(method="sinkhorn_log") on float32 torch
                  tensors for ``--pot-iters`` iterations (speed per iteration)

The machine may be shared: the header and footer give the load average, and at
full scale the global time is also rescaled to the load under which POT took
0.457 s per iteration (an estimate, printed as global_s_at_ref_load).

Usage:
  .venv/bin/python benchmarks/purify_scale.py           # full scale (minutes)
  .venv/bin/python benchmarks/purify_scale.py --quick   # N = 20,000 (< 3 min)

The last line reads ``RESULT global_s=<s> peak_mb=<mb> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_N, K = 310_009, 101
# POT's sinkhorn_log at full scale, measured earlier on this machine under light load.
REF_POT_S_PER_ITER = 0.457


def make_data(n: int, k: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    """Probabilities peaked on the true class, and labels with ``noise`` flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, size=n)
    logits = rng.standard_normal((n, k), dtype=np.float32)
    rows = np.arange(n)
    logits[rows, true] += 3.0 + rng.random(n, dtype=np.float32)
    logits[rows, (true + 1) % k] += 1.5
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    given = true.copy()
    flip = rng.permutation(n)[: int(noise * n)]
    given[flip] = (true[flip] + rng.integers(1, k, size=len(flip))) % k
    return {"probs": logits, "given": given, "true": true}


def _status_mb(field: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (VmHWM); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def _maxrss_mb() -> float:
    # ru_maxrss (KiB on Linux) cannot be reset: only a fallback lower bound
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(mode: str, data_dir: str, options: dict) -> dict:
    """Run one configuration; returns its measurements (printed as JSON)."""
    import torch

    from visprompt.robust import purify, split_quality

    probs = torch.from_numpy(np.load(Path(data_dir) / "probs.npy"))
    given = torch.from_numpy(np.load(Path(data_dir) / "given.npy"))
    true = torch.from_numpy(np.load(Path(data_dir) / "true.npy"))
    out: dict = {"mode": mode, "threads": torch.get_num_threads()}
    if mode in ("global-f32", "global-f64", "patience"):
        m = options["f64_n"]
        probs, given, true = probs[:m].clone(), given[:m].clone(), true[:m].clone()
        if mode == "global-f64":
            probs = probs.double()
    kwargs: dict = {}
    if mode == "batch":
        kwargs = {"scope": "batch", "batch_size": 16}
    elif mode == "patience":
        kwargs = {"label_patience": options["patience"]}
    # Peak memory of the call: the resident high-water mark during the call
    # minus the resident memory just before it.
    exact = _reset_peak()
    before = _status_mb("VmRSS") if exact else _maxrss_mb()
    start = time.perf_counter()
    if mode == "pot":
        import ot

        n, k = probs.shape
        cost = -torch.log(probs + 1e-8)
        ot.sinkhorn(
            torch.full((n,), 1.0 / n),
            torch.full((k,), 1.0 / k),
            cost,
            0.01,
            method="sinkhorn_log",
            numItermax=options["pot_iters"],
            stopThr=0.0,
            warn=False,
        )
        out["seconds"] = time.perf_counter() - start
        out["iters"] = options["pot_iters"]
    else:
        res = purify(probs, given, **kwargs)
        out["seconds"] = time.perf_counter() - start
        out["iters"] = res.num_iter
        out["marginal_error"] = res.marginal_error
        out.update(split_quality(res.clean_mask, given, true, res.pseudo_labels))
        np.save(Path(data_dir) / f"clean_{mode}.npy", res.clean_mask.numpy())
        np.save(Path(data_dir) / f"pseudo_{mode}.npy", res.pseudo_labels.numpy())
    after = _status_mb("VmHWM") if exact else _maxrss_mb()
    out["peak_mb"] = after - before
    out["peak_method"] = "VmHWM - VmRSS" if exact else "ru_maxrss delta"
    return out


def run_child(mode: str, data_dir: str, options: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", data_dir]
    cmd += ["--options", json.dumps(options)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 20,000 instead of 310,009")
    parser.add_argument("--n", type=int, default=None, help="number of samples (overrides)")
    parser.add_argument("--noise", type=float, default=0.4, help="fraction of flipped labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--f64-n", type=int, default=50_000, help="size of the f32/f64 check")
    parser.add_argument("--patience", type=int, default=100, help="0 skips the patience row")
    parser.add_argument("--pot-iters", type=int, default=10, help="0 skips the POT row")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.data, json.loads(args.options))))
        return

    n = args.n or (20_000 if args.quick else FULL_N)
    f64_n = min(args.f64_n, n) if not args.quick else min(10_000, n)
    options = {"f64_n": f64_n, "patience": args.patience, "pot_iters": args.pot_iters}
    load_before = os.getloadavg()
    print(
        f"N={n} K={K} noise={args.noise} seed={args.seed} cpus={os.cpu_count()} "
        f"load(1/5/15 min)={load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}"
    )
    modes = ["global", "batch", "global-f32", "global-f64"]
    if args.patience > 0:
        modes.append("patience")
    if args.pot_iters > 0:
        modes.append("pot")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="purify_scale_") as tmp:
        data = make_data(n, K, args.noise, args.seed)
        for name, arr in data.items():
            np.save(Path(tmp) / f"{name}.npy", arr)
        del data
        for mode in modes:
            rows[mode] = run_child(mode, tmp, options)
            print(f"  done {mode}: {rows[mode]['seconds']:.1f} s", flush=True)

        def diff(a: str, b: str, what: str) -> int:
            x = np.load(Path(tmp) / f"{what}_{a}.npy")
            y = np.load(Path(tmp) / f"{what}_{b}.npy")
            return int((x != y).sum())

        f32_vs_f64 = (
            diff("global-f32", "global-f64", "clean"),
            diff("global-f32", "global-f64", "pseudo"),
        )
        patience_diff = diff("global-f32", "patience", "clean") if "patience" in rows else None

    header = (
        f"{'mode':<11} {'N':>7} {'sec':>7} {'iters':>5} {'peak MB':>8} {'marg.err':>9} "
        f"{'prec':>6} {'recall':>6} {'n.prec':>6} {'n.rec':>6} {'pl.acc':>6}"
    )
    print(header)
    print("-" * len(header))
    for mode, r in rows.items():
        if mode == "pot":
            print(
                f"{mode:<11} {n:>7} {r['seconds']:>7.1f} {r['iters']:>5} {r['peak_mb']:>8.0f}"
                "   (POT ot.sinkhorn(method='sinkhorn_log') on float32 torch tensors)"
            )
            continue
        print(
            f"{mode:<11} {r['n']:>7} {r['seconds']:>7.1f} {r['iters']:>5} "
            f"{r['peak_mb']:>8.0f} {r['marginal_error']:>9.1e} {r['precision']:>6.3f} "
            f"{r['recall']:>6.3f} {r['noisy_precision']:>6.3f} {r['noisy_recall']:>6.3f} "
            f"{r['pseudo_label_accuracy']:>6.3f}"
        )
    g, b = rows["global"], rows["batch"]
    print(
        f"float32 vs float64 on N={f64_n}: {f32_vs_f64[0]} clean verdicts and "
        f"{f32_vs_f64[1]} pseudo-labels differ"
    )
    if patience_diff is not None:
        p, g32 = rows["patience"], rows["global-f32"]
        print(
            f"label_patience={args.patience} on N={f64_n}: {p['iters']} iterations instead of "
            f"{g32['iters']}, {patience_diff} clean verdicts differ"
        )
    extra = ""
    if "pot" in rows:
        pot_per_iter = rows["pot"]["seconds"] / rows["pot"]["iters"]
        ours_per_iter = g["seconds"] / g["iters"]
        # The machine is shared: express our time at the load under which POT
        # took REF_POT_S_PER_ITER per iteration at full scale (an estimate).
        print(
            f"per iteration: POT sinkhorn_log {pot_per_iter:.3f} s, ours {ours_per_iter:.4f} s "
            f"(x{pot_per_iter / ours_per_iter:.0f})"
        )
        extra = f" pot_s_per_iter={pot_per_iter:.3f} ours_s_per_iter={ours_per_iter:.4f}"
        if n == FULL_N:
            scaled = g["seconds"] * REF_POT_S_PER_ITER / pot_per_iter
            print(
                f"global scaled to the load at which POT took {REF_POT_S_PER_ITER} s/iteration: "
                f"{scaled:.1f} s"
            )
            extra += f" global_s_at_ref_load={scaled:.1f}"
    load_after = os.getloadavg()
    print(
        f"peak MB = extra resident memory during the call, in a fresh process "
        f"({g['peak_method']}); torch threads={g['threads']}; "
        f"load(1 min) before/after = {load_before[0]:.2f}/{load_after[0]:.2f}"
    )
    print(
        f"RESULT global_s={g['seconds']:.2f} peak_mb={g['peak_mb']:.0f} iters={g['iters']} "
        f"batch_s={b['seconds']:.2f} batch_peak_mb={b['peak_mb']:.0f} "
        f"noisy_precision={g['noisy_precision']:.4f} noisy_recall={g['noisy_recall']:.4f} "
        f"f32_f64_clean_diff={f32_vs_f64[0]}{extra} n={n} load1={load_after[0]:.2f}"
    )


if __name__ == "__main__":
    main()
