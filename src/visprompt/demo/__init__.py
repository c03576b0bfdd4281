"""``visprompt demo``: the project's main job on the shipped synthetic world, offline.

It generates the ``synthetic-shapes`` task, then trains zero-shot CLIP, CoOp,
NLPrompt and VisPrompt on 16 shots per class with clean labels and with 50%
symmetric label noise, using the small ``demo-tiny`` CLIP that ships with the
package. It prints a table of test accuracy and of the OT clean-split
precision/recall, and writes into one folder: the table (Markdown and CSV), a
plot of accuracy against noise rate per method, the label-issue CSV of the
VisPrompt run, and every run folder. Whatever ordering of methods comes out is
what it prints: nothing is tuned to favour a method.

Modes: default (one seed), ``quick`` (fewer epochs), ``smoke`` (a few seconds,
for CI), ``full`` (symmetric and pair-flip noise at 25/50/75% and 3 seeds).
Runs already finished in the output folder are reused, interrupted ones resume.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from visprompt.config import apply_overrides, compose, resolve, set_value, validate_run_config
from visprompt.engine.checkpoint import atomic_write_text
from visprompt.engine.run import RESULT_FILE, train_run
from visprompt.errors import VispromptError

METHODS = ("zeroshot", "coop", "nlprompt", "visprompt")
OT_METHODS = ("nlprompt", "visprompt")


@dataclass(frozen=True)
class Mode:
    noise: tuple[tuple[str, float], ...]
    seeds: tuple[int, ...]
    overrides: dict


MODES: dict[str, Mode] = {
    "default": Mode((("none", 0.0), ("sym", 0.5)), (1,), {}),
    "quick": Mode((("none", 0.0), ("sym", 0.5)), (1,), {"optim.epochs": 10}),
    "smoke": Mode(
        (("sym", 0.5),),
        (1,),
        {"optim.epochs": 2, "data.shots": 4, "data.num_views": 2},
    ),
    "full": Mode(
        (
            ("none", 0.0),
            ("sym", 0.25),
            ("sym", 0.5),
            ("sym", 0.75),
            ("asym", 0.25),
            ("asym", 0.5),
            ("asym", 0.75),
        ),
        (1, 2, 3),
        {},
    ),
}


def base_config() -> dict:
    text = resources.files("visprompt.demo").joinpath("demo.yaml").read_text()
    return yaml.safe_load(text)


def run_name(method: str, noise: str, rate: float, seed: int) -> str:
    return f"{method}-{noise}{int(round(rate * 100))}-seed{seed}"


def planned_runs(mode: Mode) -> list[tuple[str, str, float, int]]:
    """(method, noise type, rate, seed) of every run; zero-shot once per seed."""
    runs = []
    for seed in mode.seeds:
        for method in METHODS:
            settings = mode.noise[:1] if method == "zeroshot" else mode.noise
            for noise, rate in settings:
                runs.append((method, noise, rate, seed))
    return runs


def demo_config(method: str, noise: str, rate: float, seed: int, mode: Mode, extra: list[str]):
    node = compose(base_config())
    values = {
        "method.name": method,
        "noise.type": noise,
        "noise.rate": rate,
        "data.seed": seed,
        **mode.overrides,
    }
    for key, value in values.items():
        set_value(node, key, value)
    apply_overrides(node, extra)  # as `train --set` does: a bad one is a one-line error
    return validate_run_config(resolve(node))


def _run_one(cfg, folder: Path, progress: bool) -> dict:
    quiet = lambda message: None  # noqa: E731 - the demo prints its own progress lines
    result_file = folder / RESULT_FILE
    if result_file.is_file():
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        if saved == cfg.to_dict():
            return json.loads(result_file.read_text())
        return train_run(cfg, folder, overwrite=True, progress=progress, log=quiet)
    resume = (folder / "state.pt").is_file()
    try:
        return train_run(cfg, folder, resume=resume, progress=progress, log=quiet)
    except VispromptError as exc:
        if resume and "differs from the run" in str(exc):
            return train_run(cfg, folder, overwrite=True, progress=progress, log=quiet)
        raise


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _setting(noise: str, rate: float) -> str:
    return "clean" if noise == "none" else f"{noise} {int(round(rate * 100))}%"


def summarise(results: list[dict], mode: Mode) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the demo table (methods x noise settings)."""
    header = ["method"] + [f"acc {_setting(n, r)}" for n, r in mode.noise]
    noisy = [(n, r) for n, r in mode.noise if n != "none"]
    header += [f"OT prec/rec {_setting(n, r)}" for n, r in noisy]
    rows = []
    for method in METHODS:
        row = [method]
        for noise, rate in mode.noise:
            accs = [
                r["test_accuracy"]
                for r in results
                if r["method"] == method
                and (method == "zeroshot" or (r["noise_type"], r["noise_rate"]) == (noise, rate))
            ]
            row.append(_mean_std(accs))
        for noise, rate in noisy:
            match = [
                r
                for r in results
                if r["method"] == method and (r["noise_type"], r["noise_rate"]) == (noise, rate)
            ]
            if method in OT_METHODS and match and "purify_precision" in match[0]:
                p = [100 * r["purify_precision"] for r in match]
                q = [100 * r["purify_recall"] for r in match]
                row.append(f"{_mean_std(p)} / {_mean_std(q)}")
            else:
                row.append("-")
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_accuracy(results: list[dict], mode: Mode, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 2 if any(n == "asym" for n, _ in mode.noise) else 1, figsize=(10, 4), squeeze=False
    )
    kinds = ["sym"] + (["asym"] if any(n == "asym" for n, _ in mode.noise) else [])
    for ax, kind in zip(axes[0], kinds, strict=True):
        rates = sorted({0.0} | {r for n, r in mode.noise if n == kind})
        for method in METHODS:
            means, stds = [], []
            for rate in rates:
                accs = [
                    r["test_accuracy"]
                    for r in results
                    if r["method"] == method
                    and (
                        method == "zeroshot"
                        or (rate == 0.0 and r["noise_type"] == "none")
                        or (r["noise_type"], r["noise_rate"]) == (kind, rate)
                    )
                ]
                means.append(statistics.mean(accs) if accs else float("nan"))
                stds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
            ax.errorbar(
                [100 * r for r in rates], means, yerr=stds, marker="o", capsize=3, label=method
            )
        ax.set_xlabel(f"{kind} label noise (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"synthetic-shapes, demo-tiny, {kind} noise")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run_demo(
    out_dir: str | Path = "demo-output",
    mode: str = "default",
    overrides: list[str] | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the demo into ``out_dir``; returns the table and the paths written."""
    if mode not in MODES:
        raise VispromptError(f"unknown demo mode {mode!r}; choose one of {', '.join(MODES)}")
    spec = MODES[mode]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VispromptError(f"demo output {out} is a file; give a folder with --out")
    extra = list(overrides or [])
    plan = planned_runs(spec)
    configs = [demo_config(m, n, r, s, spec, extra) for m, n, r, s in plan]  # validate first
    started = time.perf_counter()
    log(f"visprompt demo ({mode}): {len(plan)} runs on the synthetic-shapes world -> {out}")
    results = []
    for i, ((method, noise, rate, seed), cfg) in enumerate(zip(plan, configs, strict=True), 1):
        t0 = time.perf_counter()
        name = run_name(method, noise, rate, seed)
        log(f"[{i}/{len(plan)}] {name} ...")
        result = _run_one(cfg, out / "runs" / name, progress)
        result["run_name"] = name
        results.append(result)
        ot = ""
        if "purify_precision" in result:
            ot = (
                f", OT clean-split precision {100 * result['purify_precision']:.1f}% "
                f"recall {100 * result['purify_recall']:.1f}%"
            )
        log(
            f"[{i}/{len(plan)}] {name}: test accuracy {result['test_accuracy']:.1f}%{ot} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    header, rows = summarise(results, spec)
    md = markdown_table(header, rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(out / "results.md", "# visprompt demo results\n\n" + md)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "runs.json", json.dumps(results, indent=2))
    plot_accuracy(results, spec, out / "accuracy_vs_noise.png")
    written = [out / "results.md", out / "results.csv", out / "accuracy_vs_noise.png"]
    noisy_vp = [r for r in results if r["method"] == "visprompt" and r["noise_type"] != "none"]
    if noisy_vp:
        from visprompt.experiments.label_issues import export_label_issues

        target = noisy_vp[0]
        issues, path = export_label_issues(
            out / "runs" / target["run_name"], out / "label_issues.csv"
        )
        written.append(path)
        s = issues.summary
        if "noisy_precision" in s:
            log(
                f"label issues ({target['run_name']}): {s['num_flagged_noisy']} flagged, "
                f"precision {100 * s['noisy_precision']:.1f}% recall "
                f"{100 * s['noisy_recall']:.1f}% against the injected noise"
            )
    log("")
    log(md)
    log(f"wrote {', '.join(str(p) for p in written)} in {time.perf_counter() - started:.0f} s")
    return {"header": header, "rows": rows, "results": results, "files": written}


def _cmd(args: argparse.Namespace) -> int:
    mode = "default"
    for flag in ("quick", "smoke", "full"):
        if getattr(args, flag):
            if mode != "default":
                raise VispromptError("choose at most one of --quick, --smoke and --full")
            mode = flag
    run_demo(args.out, mode, args.overrides, progress=not args.quiet)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from visprompt.cli import add_set_argument

    p = sub.add_parser(
        "demo",
        help="train zero-shot, CoOp, NLPrompt and VisPrompt on the shipped synthetic world",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--out", "-o", default="demo-output", help="output folder (demo-output)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (about 3 minutes)")
    p.add_argument("--smoke", action="store_true", help="seconds-long check of the pipeline")
    p.add_argument("--full", action="store_true", help="sym + pair noise, 3 rates, 3 seeds")
    add_set_argument(p, "override a key of every demo run, e.g. --set optim.epochs=5")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-epoch progress bars")
    p.set_defaults(func=_cmd)
