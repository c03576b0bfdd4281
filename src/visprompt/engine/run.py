"""One run, end to end: config -> prepared run (:mod:`.assembly`) -> trainer -> run folder.

See :mod:`visprompt.engine.run_folder` for the files a run writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from visprompt.config import RunConfig
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.assembly import (
    PreparedRun,
    evaluate_test,
    finish_fitting,
    fit_record,
    prepare_run,
    weights_metadata,
)
from visprompt.engine.run_folder import (
    CONFIG_FILE,
    RESULT_FILE,
    TRAINSET_FILE,
    Log,
    check_run_folder,
    clear_run_files,
    log_to_stderr,
    read_run_json,
    versions,
    write_metrics,
    write_result,
)
from visprompt.engine.selection import make_selection
from visprompt.engine.tracking import RunTrackers, check_tracking
from visprompt.engine.trainer import TrainData, Trainer
from visprompt.methods.fitted import FitsOnData
from visprompt.robust.quality import PURIFY_PREFIX


def train_run(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = log_to_stderr,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train (or, for zero-shot, only evaluate) one run into ``out_dir``; return result.json.

    Raises VispromptError before writing anything if the config, data or
    checkpoint are wrong; an interrupted run keeps its last epoch's checkpoint
    and continues with ``resume=True``.
    """
    out = Path(out_dir)
    check_run_folder(out, cfg, resume, overwrite)
    check_tracking(cfg)
    if resume and (out / RESULT_FILE).is_file():
        log(f"run in {out} is already finished")
        return read_run_json(out, RESULT_FILE)
    started = time.perf_counter()
    if cfg.engine.threads is not None:
        torch.set_num_threads(cfg.engine.threads)
    prep = prepare_run(cfg, progress=progress, log=log)
    method = prep.method
    log(method.describe())
    trainset = prep.trainset
    labels = torch.tensor(trainset.noise.noisy, dtype=torch.long)
    true_labels = (
        torch.tensor(trainset.noise.true, dtype=torch.long) if trainset.true_known else None
    )
    if not method.trainable:
        return _finish_untrained(cfg, out, prep, started, overwrite, log)
    selection = make_selection(prep)  # eval.select: best-val (None: the last epoch)
    # a choice after the last epoch (best-val, a fitted method's val search): the test
    # split is read once, after it, never inside the loop (eval.every aside: logging only)
    test_after_loop = selection is not None or isinstance(method, FitsOnData)
    trainer = Trainer(
        method,
        TrainData(prep.train_features, labels, true_labels, live=prep.live),
        cfg.optim,
        seed=cfg.train_seed,
        precision=cfg.precision,
        eval_batch_size=cfg.engine.batch_size,
        progress=progress,
    )
    history: list[dict] = []
    start_epoch = 0
    if resume:
        state = ckpt.load_state(out)
        trainer.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        if selection is not None:
            selection.load_state_dict(state["selection"])
        log(f"resuming {out} after epoch {start_epoch}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            clear_run_files(out)
        ckpt.atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        ckpt.atomic_write_text(out / TRAINSET_FILE, json.dumps(prep.trainset_record()))

    trackers = RunTrackers(cfg, out, history, log)
    every = cfg.eval.every

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        last = epoch + 1 == cfg.optim.epochs
        if selection is not None:
            metrics.update(selection.after_epoch(epoch))
        if (every and (epoch + 1) % every == 0) or (last and not test_after_loop):
            metrics.update(evaluate_test(prep))
        history.append(metrics)
        # the checkpoint first: it holds the history, so a kill between the two writes
        # leaves metrics.jsonl one epoch behind (rewritten whole at the next epoch), never
        # an epoch logged without the state to resume it from
        state = trainer.state_dict()
        state.update(epoch=epoch, history=history, rng=ckpt.rng_state())
        if selection is not None:
            state["selection"] = selection.state_dict()
        ckpt.save_state(out, state)
        ckpt.save_weights(
            out / ckpt.WEIGHTS_FILE, method.state_dict(), weights_metadata(prep, epoch + 1)
        )
        write_metrics(out, history)
        trackers.epoch(metrics)
        shown = ", ".join(
            f"{k} {v:.2f}" for k, v in metrics.items() if k in ("train_loss", "train_acc")
        )
        log(f"epoch {epoch + 1}/{cfg.optim.epochs}: {shown} ({metrics['seconds']:.2f} s)")
        if on_epoch is not None:
            on_epoch(metrics)

    try:
        trainer.fit(start_epoch=start_epoch, on_epoch=after_epoch)
    except BaseException as exc:
        trackers.finish(None, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if selection is not None:
        selection.restore()  # the weights of the epoch best on val
    changed = finish_fitting(prep)  # a choice made on val after the last epoch (Tip-Adapter-F)
    if test_after_loop:
        final = evaluate_test(prep)
        if selection is None:  # the last epoch's model after its fitted choice: log it there
            history[-1].update(final)
            write_metrics(out, history)
    else:
        final = {k: history[-1][k] for k in ("test_accuracy", "test_macro_accuracy")}
    if changed or selection is not None:  # the weights tested are the weights saved
        ckpt.save_weights(
            out / ckpt.WEIGHTS_FILE, method.state_dict(), weights_metadata(prep, cfg.optim.epochs)
        )
    result = _result(cfg, prep, final, started)
    result.update(selection.record() if selection is not None else {"selection": "last"})
    result["seconds_per_epoch"] = sum(h["seconds"] for h in history) / len(history)
    result.update({k: v for k, v in history[-1].items() if k.startswith(PURIFY_PREFIX)})
    result = write_result(out, cfg, result, log)
    trackers.finish(result)
    return result


def _finish_untrained(
    cfg: RunConfig, out: Path, prep: PreparedRun, started: float, overwrite: bool, log: Log
) -> dict[str, Any]:
    """Methods without parameters (zero-shot): evaluate and write the run folder."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_run_files(out)
    ckpt.atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    ckpt.atomic_write_text(out / TRAINSET_FILE, json.dumps(prep.trainset_record()))
    ckpt.save_weights(out / ckpt.WEIGHTS_FILE, prep.method.state_dict(), weights_metadata(prep, 0))
    trackers = RunTrackers(cfg, out, [], log)
    result = write_result(out, cfg, _result(cfg, prep, evaluate_test(prep), started), log)
    trackers.finish(result)
    return result


def _result(cfg: RunConfig, prep: PreparedRun, final: dict, started: float) -> dict[str, Any]:
    trainset, method = prep.trainset, prep.method
    return {
        **final,
        "run_id": cfg.run_id(),
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "backbone": prep.backbone.identity.name,
        "shots": cfg.data.shots,
        "noise_type": cfg.noise.type,
        "noise_rate": cfg.noise.rate,
        "noise_protocol": cfg.noise.protocol,
        "seed": cfg.data.seed,
        "epochs": cfg.optim.epochs if method.trainable else 0,
        "num_train": len(trainset.samples),
        "num_duplicates": trainset.num_duplicates,
        "num_noisy": int(trainset.noise.is_noisy.sum()) if trainset.true_known else None,
        "num_test": int(prep.test_labels.numel()),
        "num_classes": prep.splits.num_classes,
        "trainable_params": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "feature_cache": {"hits": prep.cache.hits, "misses": prep.cache.misses},
        **fit_record(prep),
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
        "device": device_record(prep.backbone.device),
    }


def device_record(device: torch.device) -> dict[str, Any]:
    """The device a run computed on, as its process saw it (result.json's ``device``).

    ``cuda_visible_devices`` maps ``cuda:0`` back to the physical GPU: a sweep
    with ``--gpus`` (or SLURM) gives each run's process one GPU through it.
    """
    name = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    return {
        "device": str(device),
        "name": name,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
