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

Solvers side by side (``--compare-n`` samples, default 50,000, K = 101, eps =
0.01, at most 1000 iterations, tol 1e-6 checked every 10 iterations, cost
-log(P + 1e-8), uniform marginals; every solver gets the same torch tensors):
  ours f32/f64    visprompt.robust.sinkhorn.sinkhorn_log (absorption-stabilised)
  pot-log         POT ot.bregman.sinkhorn_log (torch backend)
  pot-stab        POT ot.bregman.sinkhorn_stabilized (torch backend, print_period
                  10 so it tests the stopping rule as often as the others)
  ours-batch      purify(scope="batch", batch_size=16): all 16-sample blocks as
                  one batched problem
  pot-log-batch   POT sinkhorn_log block by block (POT has no batched solver for
                  different costs) on the first ``--pot-blocks`` blocks of the
                  same shuffle, time extrapolated to all blocks
Each row reports time, iterations, non-finite plan entries, rows that lost
their mass (NaN or zero), and how many pseudo-labels and clean verdicts
(pseudo-label = given label) differ from the reference: POT sinkhorn_log in
float64 for the global rows, POT's block loop (on the blocks it solved) for the
batch rows. ``--solvers-only`` runs just this table.

The machine may be shared: the header and footer give the load average, and at
full scale the global time is also rescaled to the load under which POT took
0.457 s per iteration (an estimate, printed as global_s_at_ref_load).

Usage:
  .venv/bin/python benchmarks/purify_scale.py           # full scale (minutes)
  .venv/bin/python benchmarks/purify_scale.py --quick   # N = 20,000 (< 3 min)
  .venv/bin/python benchmarks/purify_scale.py --solvers-only   # the solver table

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


#: Solver rows of the side-by-side table: mode -> (label, dtype name).
SOLVER_MODES = {
    "solver-ours-f32": ("ours", "f32"),
    "solver-ours-f64": ("ours", "f64"),
    "solver-pot-log-f32": ("POT sinkhorn_log", "f32"),
    "solver-pot-log-f64": ("POT sinkhorn_log", "f64"),
    "solver-pot-stab-f32": ("POT sinkhorn_stabilized", "f32"),
    "solver-pot-stab-f64": ("POT sinkhorn_stabilized", "f64"),
    "solver-ours-batch": ("ours, batch scope (batched)", "f32"),
    "solver-pot-log-batch": ("POT sinkhorn_log, batch scope (loop)", "f32"),
}
SOLVER_REFERENCE = "solver-pot-log-f64"
BATCH_REFERENCE = "solver-pot-log-batch"
REG, ITERS, TOL, BLOCK = 0.01, 1000, 1e-6, 16


def solver_child(mode: str, data_dir: str, options: dict) -> dict:
    """One solver on the first ``compare_n`` samples; saves its pseudo-labels."""
    import warnings

    import ot
    import torch

    from visprompt.robust.ot_purify import purify
    from visprompt.robust.sinkhorn import sinkhorn_log

    m = options["compare_n"]
    probs = torch.from_numpy(np.load(Path(data_dir) / "probs.npy"))[:m].clone()
    given = torch.from_numpy(np.load(Path(data_dir) / "given.npy"))[:m].clone()
    dtype = torch.float64 if mode.endswith("f64") else torch.float32
    p = probs.to(dtype)
    cost = -torch.log(p + 1e-8)
    n, k = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=dtype)
    b = torch.full((k,), 1.0 / k, dtype=dtype)
    out: dict = {"mode": mode, "n": n, "threads": torch.get_num_threads()}
    index = torch.arange(n)  # the samples this row judges
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if mode.startswith("solver-ours-f"):
            res = sinkhorn_log(cost, REG, num_iter_max=ITERS, tol=TOL)
            plan, iters = res.plan, res.num_iter
        elif mode.startswith("solver-pot-log-f"):
            plan, log = ot.bregman.sinkhorn_log(
                a, b, cost, REG, numItermax=ITERS, stopThr=TOL, log=True
            )
            iters = int(log["niter"]) + 1
        elif mode.startswith("solver-pot-stab-f"):
            plan, log = ot.bregman.sinkhorn_stabilized(
                a, b, cost, REG, numItermax=ITERS, stopThr=TOL, print_period=10, log=True
            )
            iters = int(log["n_iter"]) + 1
        elif mode == "solver-ours-batch":
            res = purify(p, given, scope="batch", batch_size=BLOCK, return_plan=True)
            plan, iters = res.plan, res.num_iter
        elif mode == "solver-pot-log-batch":
            # the blocks purify(scope="batch") cuts by default: randperm(N) of a seed-0 generator
            order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
            blocks = list(order.split(BLOCK))
            used = blocks[: options["pot_blocks"]]
            plan = torch.empty(n, k, dtype=dtype)
            iters = 0
            for idx in used:
                c = cost[idx]
                ab = torch.full((len(idx),), 1.0 / len(idx), dtype=dtype)
                plan_b, log = ot.bregman.sinkhorn_log(
                    ab, b, c, REG, numItermax=ITERS, stopThr=TOL, log=True, warn=False
                )
                plan[idx] = plan_b
                iters = max(iters, int(log["niter"]) + 1)
            index = torch.cat(used)
            out["blocks_measured"], out["blocks_total"] = len(used), len(blocks)
        else:
            raise SystemExit(f"unknown solver mode {mode}")
        seconds = time.perf_counter() - start
    if mode == "solver-pot-log-batch":
        out["measured_seconds"] = seconds
        seconds *= out["blocks_total"] / out["blocks_measured"]  # extrapolated
    plan = plan[index]
    finite_rows = torch.isfinite(plan).all(dim=1)
    row_sum = torch.where(torch.isfinite(plan), plan, 0).sum(dim=1)
    pseudo = torch.where(finite_rows, plan.nan_to_num(-1.0).argmax(dim=1), -1)
    out.update(
        seconds=seconds,
        iters=iters,
        nonfinite=int((~torch.isfinite(plan)).sum()),
        lost_rows=int((~finite_rows | (row_sum <= 0)).sum()),
        warnings=sorted({str(w.message).split(".")[0][:60] for w in caught}),
    )
    np.save(Path(data_dir) / f"index_{mode}.npy", index.numpy())
    np.save(Path(data_dir) / f"pseudo_{mode}.npy", pseudo.numpy())
    # rows normalised to sum 1 (the global and block plans have other row masses)
    np.save(Path(data_dir) / f"plan_{mode}.npy", (plan / row_sum[:, None]).float().numpy())
    return out


#: Reference rows whose two largest plan entries are this close (relative) are ties:
#: their argmax is decided by rounding, so solvers may break them differently.
TIE_GAP = 1e-4


def solver_table(rows: dict[str, dict], data_dir: str, n: int) -> list[str]:
    """The side-by-side lines.

    Global rows are compared with POT sinkhorn_log in float64 on all samples;
    the batch-scope rows (other problems) with POT's block loop, on the blocks
    it solved.
    """
    given = np.load(Path(data_dir) / "given.npy")

    def load(mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index, pseudo, plan) scattered to all samples (-2 / NaN where not solved)."""
        index = np.load(Path(data_dir) / f"index_{mode}.npy")
        pseudo = np.full(len(given), -2, dtype=np.int64)
        pseudo[index] = np.load(Path(data_dir) / f"pseudo_{mode}.npy")
        plan = np.full((len(given), K), np.nan, dtype=np.float32)
        plan[index] = np.load(Path(data_dir) / f"plan_{mode}.npy")
        return index, pseudo, plan

    def reference(mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        index, pseudo, plan = load(mode)
        top2 = -np.sort(-plan[index], axis=1)[:, :2]
        tied = np.zeros(len(given), dtype=bool)
        tied[index] = (top2[:, 0] - top2[:, 1]) <= TIE_GAP * top2[:, 0]
        return index, pseudo, plan, tied

    refs = {"global": reference(SOLVER_REFERENCE), "batch": reference(BATCH_REFERENCE)}
    lines = [
        f"solvers side by side: N={n} K={K} eps={REG} <= {ITERS} iterations, tol {TOL}; "
        "verdicts against POT (see below)",
        f"{'solver':<38} {'dtype':>5} {'sec':>8} {'iters':>5} {'ms/iter':>8} "
        f"{'non-fin':>8} {'lost':>6} {'plan err':>8} {'ties':>6} {'pseudo!=':>8} "
        f"{'(untied)':>8} {'clean!=':>8}  warnings",
    ]
    lines.append("-" * len(lines[1]))
    for mode, r in rows.items():
        label, prec = SOLVER_MODES[mode]
        ref_index, ref_all, ref_plan, tied = refs["batch" if "batch" in mode else "global"]
        _, mine, my_plan = load(mode)
        pseudo, ref, y = mine[ref_index], ref_all[ref_index], given[ref_index]
        differ = pseudo != ref
        d_pseudo = int(differ.sum())
        d_untied = int((differ & ~tied[ref_index]).sum())
        n_ties = int(tied[ref_index].sum())
        d_clean = int(((pseudo == y) != (ref == y)).sum())
        with np.errstate(invalid="ignore"):
            gap = np.abs(my_plan[ref_index] - ref_plan[ref_index]).max()
        plan_err = float(gap / np.abs(ref_plan[ref_index]).max())
        sec = f"{r['seconds']:.1f}" + ("*" if "blocks_total" in r else "")
        if "blocks_total" in r:
            label += f" [{r['blocks_measured']}/{r['blocks_total']} blocks]"
        per_iter = 1000 * r["seconds"] / max(r["iters"], 1)
        lines.append(
            f"{label:<38} {prec:>5} {sec:>8} {r['iters']:>5} {per_iter:>8.2f} "
            f"{r['nonfinite']:>8} {r['lost_rows']:>6} {plan_err:>8.1e} {n_ties:>6} "
            f"{d_pseudo:>8} {d_untied:>8} {d_clean:>8}  "
            f"{'; '.join(r['warnings']) or '-'}"
        )
    if any("blocks_total" in r for r in rows.values()):
        lines.append(
            "* extrapolated from the blocks measured. Batch rows: against POT's block loop on "
            "the blocks it solved; global rows: against POT sinkhorn_log float64"
        )
    lines.append(
        "plan err = max |plan - reference| / max reference (rows normalised to 1); ties = "
        f"reference rows whose top two entries are within {TIE_GAP:g} (relative), whose "
        "argmax rounding decides; (untied) = pseudo-labels that differ outside ties; plans are "
        "compared in float32 (0 = agreement below float32 resolution)"
    )
    return lines


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
    parser.add_argument(
        "--compare-n", type=int, default=50_000, help="samples of the solver table (0 skips it)"
    )
    parser.add_argument(
        "--pot-blocks", type=int, default=100, help="blocks POT solves in the batch-scope row"
    )
    parser.add_argument("--solvers-only", action="store_true", help="only the solver table")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run = solver_child if args.child.startswith("solver-") else child
        print(json.dumps(run(args.child, args.data, json.loads(args.options))))
        return

    if args.solvers_only:
        n = args.n or args.compare_n
    else:
        n = args.n or (20_000 if args.quick else FULL_N)
    f64_n = min(args.f64_n, n) if not args.quick else min(10_000, n)
    compare_n = min(args.compare_n, n)
    options = {
        "f64_n": f64_n,
        "patience": args.patience,
        "pot_iters": args.pot_iters,
        "compare_n": compare_n,
        "pot_blocks": args.pot_blocks,
    }
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
    if args.solvers_only:
        modes = []
    solver_modes = list(SOLVER_MODES)
    rows, solver_rows, solver_lines = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="purify_scale_") as tmp:
        data = make_data(n, K, args.noise, args.seed)
        for name, arr in data.items():
            np.save(Path(tmp) / f"{name}.npy", arr)
        del data
        for mode in modes:
            rows[mode] = run_child(mode, tmp, options)
            print(f"  done {mode}: {rows[mode]['seconds']:.1f} s", flush=True)
        for mode in solver_modes if compare_n > 0 else []:
            solver_rows[mode] = run_child(mode, tmp, options)
            print(f"  done {mode}: {solver_rows[mode]['seconds']:.1f} s", flush=True)
        if solver_rows:
            ordered = {m: solver_rows[m] for m in SOLVER_MODES}
            solver_lines = solver_table(ordered, tmp, compare_n)

        def diff(a: str, b: str, what: str) -> int:
            x = np.load(Path(tmp) / f"{what}_{a}.npy")
            y = np.load(Path(tmp) / f"{what}_{b}.npy")
            return int((x != y).sum())

        if args.solvers_only:
            load_after = os.getloadavg()
            print("\n".join(solver_lines))
            o32, p32 = solver_rows["solver-ours-f32"], solver_rows["solver-pot-log-f32"]
            print(
                f"RESULT solvers n={compare_n} ours_f32_s={o32['seconds']:.2f} "
                f"pot_log_f32_s={p32['seconds']:.2f} "
                f"pot_stab_f32_lost_rows={solver_rows['solver-pot-stab-f32']['lost_rows']} "
                f"load1={load_after[0]:.2f}"
            )
            return
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
    if solver_lines:
        print("\n".join(solver_lines))
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
