"""The ``visprompt`` command: the edge where text becomes typed config and errors become exit codes.

Every subcommand parses its arguments, calls one library function and prints
the result. A :class:`VispromptError` is printed as one ``error: ...`` line with
exit status 2; Ctrl-C exits with status 130 after the library has kept its last
checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visprompt.errors import VispromptError

Handler = Callable[[argparse.Namespace], int]

#: Modules that add their own subcommands: each has ``add_commands(subparsers)``
#: whose parsers set ``func`` to a handler ``(args) -> exit code``.
COMMAND_MODULES: tuple[str, ...] = (
    "visprompt.experiments.label_issues",
    "visprompt.experiments.commands",
    "visprompt.demo",
)


def add_set_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_allow_unfinished_argument(p: argparse.ArgumentParser) -> None:
    """``--allow-unfinished``: use an interrupted run's last checkpoint (outputs say so)."""
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="use the last checkpoint of a run that did not finish (the output says so)",
    )


def add_mlflow_argument(p: argparse.ArgumentParser) -> None:
    """``--mlflow URI``: also log runs to MLflow (sets ``tracking.mlflow``)."""
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log to this MLflow tracking server or sqlite:///FILE store "
        "(needs pip install 'visprompt[mlflow]')",
    )


def add_root_argument(p: argparse.ArgumentParser) -> None:
    """``--root``: the run's data moved; checked against the dataset's recorded fingerprint."""
    p.add_argument(
        "--root",
        help="the run's dataset under another root (checked to be the same dataset)",
    )


def warn_unfinished(run: str, status: str) -> None:
    if status:
        print(f"warning: run {run} is {status}; these are its last checkpoint's", file=sys.stderr)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="run YAML file")
    add_set_argument(p, "override a config key, e.g. --set optim.lr=0.001 (repeatable)")


# ---------------------------------------------------------------- handlers


def cmd_train(args: argparse.Namespace) -> int:
    from visprompt.config import load_run_config
    from visprompt.engine.run import train_run

    overrides = list(args.overrides)
    if args.no_cache:
        overrides.append("use_cache=false")
    if args.allow_fewer:
        overrides.append("data.allow_fewer=true")
    if args.mlflow:
        overrides.append(f"tracking.mlflow={args.mlflow}")
    cfg = load_run_config(args.config, overrides)
    result = train_run(
        cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet
    )
    print(
        f"test accuracy: {result['test_accuracy']:.2f}% "
        f"(macro {result['test_macro_accuracy']:.2f}%)  run folder: {args.out}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from visprompt.engine.reload import evaluate_run

    m = evaluate_run(
        args.run,
        split=args.split,
        progress=not args.quiet,
        allow_unfinished=args.allow_unfinished,
        root=args.root,
    )
    warn_unfinished(args.run, m["status"])
    if args.json:
        print(json.dumps(m))
    else:
        print(
            f"{m['split']}: accuracy {m['accuracy']:.2f}%  macro accuracy "
            f"{m['macro_accuracy']:.2f}%  ({m['num_images']} images)"
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from visprompt.data.datasets._common import IMAGE_EXTENSIONS
    from visprompt.engine.reload import predict_paths

    paths = list(args.images)
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        raise VispromptError(
            f"{folders[0]} is a folder, not an image; predict every image in it with "
            f"--folder {folders[0]}"
        )
    if args.folder:
        folder = Path(args.folder)
        if not folder.is_dir():
            raise VispromptError(f"folder not found: {folder}; give an existing --folder")
        paths += sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise VispromptError("no images given; pass image paths or --folder DIR")
    if args.csv:
        from visprompt.engine.checkpoint import check_writable

        check_writable(args.csv, "--csv")
    rows = predict_paths(args.run, paths, topk=args.topk, allow_unfinished=args.allow_unfinished)
    status = rows[0]["status"] if rows else ""
    warn_unfinished(args.run, status)
    if args.csv:
        _write_predictions_csv(Path(args.csv), rows, status)
    for row in rows:
        if not row["readable"]:
            print(f"{row['path']}: unreadable image, skipped")
            continue
        top = "  ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in row["top"])
        print(f"{row['path']}: {top}")
    return 0


def _write_predictions_csv(path: Path, rows: list[dict], status: str = "") -> None:
    import csv
    import io

    from visprompt.engine.checkpoint import atomic_write_text

    buf = io.StringIO()
    if status:
        buf.write(f"# run {status}: predictions of its last checkpoint\n")
    writer = csv.writer(buf)
    k = max((len(r["top"]) for r in rows), default=0)
    header = ["path"]
    for i in range(1, k + 1):
        header += [f"class_{i}", f"prob_{i}"]
    writer.writerow(header)
    for r in rows:
        line = [r["path"]]
        for t in r["top"]:
            line += [t["class"], f"{t['prob']:.6f}"]
        writer.writerow(line)
    atomic_write_text(path, buf.getvalue())


def cmd_datasets_list(args: argparse.Namespace) -> int:  # noqa: ARG001
    from visprompt.data.check import list_datasets

    for name, description in list_datasets():
        print(f"{name:18s} {description}")
    return 0


def cmd_datasets_check(args: argparse.Namespace) -> int:
    from visprompt.data.check import check_dataset, format_check

    report = check_dataset(
        args.name,
        args.root,
        seed=args.seed,
        verify_images=not args.no_verify,
        progress=not args.quiet,
    )
    print(format_check(report))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:  # noqa: ARG001
    from visprompt.methods import METHOD_REGISTRY

    width = max(len(name) for name in METHOD_REGISTRY.names())
    for name in METHOD_REGISTRY.names():
        entry = METHOD_REGISTRY.get(name)
        print(f"{name:{width}s} {entry.description}")
        print(f"{'':{width}s} text sequences per step: {entry.text_cost}")
        if entry.reference:
            released = ", ".join(f"{k}={v}" for k, v in entry.reference.items())
            print(f"{'':{width}s} preset: reference sets {released}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:  # noqa: ARG001
    from visprompt.backbone import BACKBONES

    for name in BACKBONES.names():
        print(name)
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visprompt",
        description="Robust prompt learning for frozen CLIP models under label noise.",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="also show the libraries' log messages"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train one run from a YAML config")
    _add_config_args(p)
    p.add_argument("--out", "-o", required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="encode freshly augmented images every step instead of cached features",
    )
    p.add_argument(
        "--allow-fewer",
        action="store_true",
        help="use all images of classes that have fewer than data.shots",
    )
    add_mlflow_argument(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy of a trained run on a split")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", "-q", action="store_true")
    add_allow_unfinished_argument(p)
    add_root_argument(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes for new images")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--folder", help="predict every image under this folder")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--csv", help="also write the predictions to this CSV file")
    add_allow_unfinished_argument(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("datasets", help="list or check datasets")
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    dsub.required = True
    q = dsub.add_parser("list", help="supported datasets")
    q.set_defaults(func=cmd_datasets_list)
    q = dsub.add_parser("check", help="read a dataset and print its sizes")
    q.add_argument("name", help="dataset name (see `visprompt datasets list`)")
    q.add_argument("--root", help="data root (CoOp layout), folder or CSV file")
    q.add_argument("--seed", type=int, default=1, help="seed of generated val splits")
    q.add_argument("--no-verify", action="store_true", help="do not decode every image")
    q.add_argument("--quiet", "-q", action="store_true")
    q.set_defaults(func=cmd_datasets_check)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub)

    p = sub.add_parser("methods", help="list the methods")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("backbones", help="list the named backbones")
    p.set_defaults(func=cmd_backbones)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Libraries' log records (e.g. open_clip's "WARNING:root: No pretrained weights
    # loaded" before our own one-line error) would give two messages, one misleading;
    # they are shown only with --verbose. Our own warnings are printed, not logged.
    root_logger = logging.getLogger()
    previous = root_logger.level
    logging.basicConfig(format="%(levelname)s:%(name)s: %(message)s")
    root_logger.setLevel(logging.INFO if args.verbose else logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except VispromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; the last finished epoch is checkpointed (use --resume)", file=sys.stderr
        )
        return 130
    finally:
        root_logger.setLevel(previous)  # main() called in-process leaves logging as it was


if __name__ == "__main__":
    sys.exit(main())
