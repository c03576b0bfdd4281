"""Label-issue detectors side by side on the demo world (the README's table).

For each noise setting (symmetric and pair-flip, 25/50/75%) this trains one run
with ``visprompt train`` on the demo's run config (``src/visprompt/demo/demo.yaml``,
its ``base``: demo-tiny CLIP, the synthetic-shapes task, 16 shots, 30 epochs)
and then compares every detector on it (what ``visprompt label-issues --compare``
prints), collecting the numbers into Markdown tables - every detector under
both scorings (``detectors.md``), and each at its default scoring
(``detectors-default.md``) - and a CSV next to the runs.
Runs that already finished are reused.

    .venv/bin/python scripts/label_issue_detectors.py --out /tmp/li-bench
    .venv/bin/python scripts/label_issue_detectors.py --method nlprompt --rates 0.5
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from importlib import resources
from pathlib import Path

import yaml

from visprompt.cli import main as visprompt
from visprompt.experiments.label_evidence import RunEvidence
from visprompt.experiments.label_issues import COMPARE_COLUMNS, compare_detectors, compare_table
from visprompt.robust.detector import DETECTORS

NOISE = {"sym": "symmetric", "asym": "pair flip"}


def demo_run_config(method: str, noise: str, rate: float, seed: int) -> dict:
    """The demo sweep's base run config with one method and noise setting."""
    sweep = yaml.safe_load(resources.files("visprompt.demo").joinpath("demo.yaml").read_text())
    cfg = sweep["base"]
    cfg["method"] = {"name": method}
    cfg["noise"] = {"type": noise, "rate": rate}
    cfg["data"]["seed"] = seed
    return cfg


def _default_scoring(detector: str) -> str:
    cls = DETECTORS.get(detector)
    return "zero-shot" if cls.evidence == "zero-shot" else cls.default_scoring


def _with_noise(rows: list[dict]) -> str:
    """The comparison table with a first column naming the noise setting."""
    table = compare_table([{**r, "detector": f"{r['noise']} | {r['detector']}"} for r in rows])
    return table.replace("| detector |", "| noise | detector |", 1).replace("|---|", "|---|---|", 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="label-issue-bench", help="folder of the runs and tables")
    p.add_argument("--method", default="coop")
    p.add_argument("--noise", nargs="+", default=list(NOISE), choices=list(NOISE))
    p.add_argument("--rates", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.perf_counter()
    for noise in args.noise:
        for rate in args.rates:
            name = f"{args.method}-{noise}{round(100 * rate)}-seed{args.seed}"
            run = out / name
            config = out / f"{name}.yaml"
            config.write_text(yaml.safe_dump(demo_run_config(args.method, noise, rate, args.seed)))
            if not (run / "result.json").is_file():
                code = visprompt(["train", "--config", str(config), "--out", str(run), "--quiet"])
                if code:
                    raise SystemExit(f"training {name} failed ({code})")
            evidence = RunEvidence.of_run(run)
            setting = f"{NOISE[noise]} {round(100 * rate)}%"
            for row in compare_detectors(evidence):
                rows.append({"noise": setting, **row})
            print(f"{setting}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    keys = ["noise", *(key for _, key in COMPARE_COLUMNS)]
    with (out / "detectors.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = _with_noise(rows)
    (out / "detectors.md").write_text(table + "\n")
    # each detector at its default scoring (what `label-issues --detector NAME` runs)
    defaults = [r for r in rows if r["scoring"].startswith(_default_scoring(r["detector"]))]
    compact = _with_noise(defaults)
    (out / "detectors-default.md").write_text(compact + "\n")
    print(table, compact, sep="\n\n")
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(
        f"RESULT method={args.method} settings={len(args.noise) * len(args.rates)} "
        f"seconds={time.perf_counter() - started:.0f} omp_threads={threads}"
    )


if __name__ == "__main__":
    main()
