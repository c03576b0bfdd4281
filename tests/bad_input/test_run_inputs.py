"""The bad-input suite, part 1: config values, run-folder states, output paths, stores.

Each row is one input a person can get wrong: the command line, the fragment the
one-line ``error: ...`` must contain, and (for every row) the rule that a refused
command exits with status 2 and leaves every file it could have touched exactly
as it was - no half-written output, the feature cache and the runs unharmed.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from vp_testing import make_folder_dataset, run_overrides, tree_snapshot

from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.run import train_run
from visprompt.errors import VispromptError
from visprompt.experiments.store import APPLICATION_ID, SCHEMA_VERSION


class Interrupt(Exception):
    """Stops a run after its first epoch, as a kill would (result.json never written)."""


@dataclass
class World:
    base: Path
    data: Path
    done: Path  # a finished run
    half: Path  # epoch 1 of 3, then interrupted
    broken: Path  # the unfinished run with a truncated state.pt
    image: Path

    def train_args(self, *overrides: str, out: str = "new") -> list[str]:
        sets = run_overrides(self.data, "coop", **{"data.cache_dir": str(self.base / "cache")})
        argv = ["train", "--quiet", "--out", str(self.base / out)]
        for item in [*sets, *overrides]:
            argv += ["--set", item]
        return argv


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoint_faults(folder: Path) -> None:
    import pickle

    import torch

    from visprompt.backbone import tiny_clip

    folder.mkdir()
    torch.save(tiny_clip("vit").state_dict(), folder / "vit.pt")
    whole = (folder / "vit.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (folder / "random.pt").write_bytes(os.urandom(4096))
    # the marker would appear inside the world, which every row checks is unchanged
    (folder / "payload.pt").write_bytes(pickle.dumps({"x": _Payload(folder / "PAYLOAD-RAN")}))
    (folder / "no-weights").mkdir()
    (folder / "no-weights" / "open_clip_config.json").write_text('{"model_cfg": {}}')
    (folder / "bad-json").mkdir()
    (folder / "bad-json" / "open_clip_config.json").write_text("{model_cfg: ")


@pytest.fixture(scope="module")
def world(tmp_path_factory, colour_dataset) -> World:
    base = tmp_path_factory.mktemp("bad_runs")
    over = run_overrides(colour_dataset, "coop", **{"data.cache_dir": str(base / "cache")})
    quiet = {"progress": False, "log": lambda m: None}
    train_run(load_run_config(None, [*over, "optim.epochs=2"]), base / "done", **quiet)

    def stop(metrics: dict) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train_run(
            load_run_config(None, [*over, "optim.epochs=3"]), base / "half", on_epoch=stop, **quiet
        )
    broken = base / "broken"
    shutil.copytree(base / "half", broken)
    state = (broken / ckpt.STATE_FILE).read_bytes()
    (broken / ckpt.STATE_FILE).write_bytes(state[: len(state) // 3])
    (base / "fresh").mkdir()
    for name, file, content in (
        ("cfg-bad", "config.yaml", b"backbone: [unclosed\n"),
        ("cfg-empty", "config.yaml", b""),
        ("weights-cut", ckpt.WEIGHTS_FILE, None),
        ("trainset-cut", "trainset.json", b'{"paths": ['),
    ):
        shutil.copytree(base / "done", base / name)
        target = base / name / file
        target.write_bytes(content if content is not None else target.read_bytes()[:100])
    (base / "latin1.yaml").write_bytes("method: {name: coop}  # caf\xe9\n".encode("latin-1"))
    (base / "utf16.yaml").write_bytes("method: {name: coop}\n".encode("utf-16"))
    (base / "sweep-latin1.yaml").write_bytes("name: d\xe9mo\n".encode("latin-1"))
    make_folder_dataset(base / "other-data", n_train=10)
    (base / "not-sqlite.db").write_bytes(os.urandom(4096))
    with sqlite3.connect(base / "newer.db") as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with sqlite3.connect(base / "other.db") as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    _checkpoint_faults(base / "ckpt")
    image = next((colour_dataset / "test" / "red").glob("*.png"))
    return World(base, colour_dataset, base / "done", base / "half", broken, image)


def _cases() -> list[tuple[str, object, str]]:
    def run(*argv):
        return lambda w: [a(w) if callable(a) else a for a in argv]

    def path(name):
        return lambda w: str(w.base / name)

    def image(w):
        return str(w.image)

    def ckpt_args(name, *extra):
        return lambda w: w.train_args(
            "backbone.name=null", f"backbone.checkpoint={w.base / 'ckpt' / name}", *extra
        )

    done, half = path("done"), path("half")
    return [
        # -- config values: refused before anything is written
        ("config-nan", lambda w: w.train_args("optim.lr=nan"), "must be a finite number"),
        ("config-inf", lambda w: w.train_args("optim.weight_decay=.inf"), "finite number"),
        ("config-nan-method", lambda w: w.train_args("method.name=nlprompt", "method.ot_reg=nan"),
         "'method.ot_reg': must be a finite number"),
        ("config-empty-override", lambda w: w.train_args("optim.lr="), "has an empty value"),
        ("config-wrong-type", lambda w: w.train_args("optim.epochs=many"),
         "bad value for 'optim.epochs'"),
        ("config-unknown-key", lambda w: w.train_args("optim.learning_rate=0.1"),
         "unknown option 'optim.learning_rate'"),
        ("config-unknown-preset", lambda w: w.train_args("preset=released"), "unknown preset"),
        ("config-negative-momentum", lambda w: w.train_args("optim.momentum=-0.9"),
         "bad value for 'optim.momentum': Input should be greater than or equal to 0"),
        ("config-negative-weight-decay", lambda w: w.train_args("optim.weight_decay=-1e-4"),
         "bad value for 'optim.weight_decay': Input should be greater than or equal to 0"),
        # -- hyper-parameter searches on val (linear-probe, tip-adapter): a grid, a val split
        ("search-empty-c-grid", lambda w: w.train_args("method.name=linear-probe", "method.c_grid=[]"),
         "method.c_grid is empty"),
        ("search-empty-tip-grid",
         lambda w: w.train_args("method.name=tip-adapter", "method.search_steps=[0,20]"),
         "leaves an empty alpha/beta grid"),
        ("search-no-val-split",
         lambda w: w.train_args("method.name=tip-adapter-f", "noise.protocol=balanced",
                                "data.val_shots=0"),
         "tip-adapter-f's alpha/beta search needs the validation split, but data.val_shots is 0"),
        # -- checkpoint faults
        ("ckpt-missing", ckpt_args("nope.pt"), "checkpoint not found"),
        ("ckpt-truncated", ckpt_args("truncated.pt"), "cannot read checkpoint"),
        ("ckpt-random-bytes", ckpt_args("random.pt"), "cannot read checkpoint"),
        ("ckpt-code-carrying-pickle", ckpt_args("payload.pt"), "as a weights-only file"),
        ("ckpt-other-architecture", ckpt_args("vit.pt", "backbone.arch=RN50"),
         "does not match architecture 'RN50'"),
        ("ckpt-folder-without-weights", ckpt_args("no-weights"), "open_clip_model.safetensors"),
        ("ckpt-folder-config-not-json", ckpt_args("bad-json"), "open_clip_config.json"),
        # -- run-folder states
        ("run-missing", run("eval", "--run", path("nope")), "run folder not found"),
        ("run-fresh", run("eval", "--run", path("fresh")), "is incomplete (missing config.yaml)"),
        ("run-unfinished-eval", run("eval", "--run", half), "is unfinished: epoch 1 of 3"),
        ("run-unfinished-predict", run("predict", "--run", half, image),
         "is unfinished: epoch 1 of 3"),
        ("run-unfinished-label-issues",
         run("label-issues", "--run", half, "--csv", path("issues.csv")),
         "is unfinished: epoch 1 of 3; resume it with"),
        ("run-corrupt-state-resume",
         lambda w: w.train_args("optim.epochs=3", out="broken") + ["--resume"],
         "cannot be read"),
        ("run-finished-retrain", lambda w: w.train_args("optim.epochs=2", out="done"),
         "already holds a finished run"),
        ("run-config-damaged", run("eval", "--run", path("cfg-bad")),
         "is damaged: config.yaml is not valid YAML"),
        ("run-config-empty", run("predict", "--run", path("cfg-empty"), image),
         "is damaged: config.yaml holds no run configuration"),
        ("run-config-damaged-resume",
         lambda w: w.train_args("optim.epochs=2", out="cfg-bad") + ["--resume"],
         "is damaged: config.yaml"),
        ("run-weights-truncated-eval", run("eval", "--run", path("weights-cut")),
         "is damaged: prompt.safetensors cannot be read"),
        ("run-weights-truncated-label-issues",
         run("label-issues", "--run", path("weights-cut"), "--csv", path("x.csv")),
         "is damaged: prompt.safetensors"),
        ("run-trainset-damaged", run("eval", "--run", path("trainset-cut"), "--split", "train"),
         "is damaged: trainset.json is not valid JSON"),
        ("run-root-other-dataset", run("eval", "--run", done, "--root", path("other-data")),
         "is not the dataset run"),
        ("run-root-missing", run("label-issues", "--run", done, "--root", path("nowhere")),
         "does not exist"),
        # -- file encodings
        ("config-latin1", run("train", "--config", path("latin1.yaml"), "--out", path("n")),
         "is not UTF-8 text (byte 0xe9 on line 1"),
        ("config-utf16", run("train", "--config", path("utf16.yaml"), "--out", path("n")),
         "is UTF-16 text; save it as UTF-8"),
        ("sweep-latin1",
         run("sweep", "--config", path("sweep-latin1.yaml"), "--db", path("s.db"), "--dry-run"),
         "is not UTF-8 text"),
        ("train-out-inside-dataset", lambda w: w.train_args(out=str(w.data / "train" / "run")),
         "is inside the dataset folder"),
        # -- predict arguments
        ("predict-folder-positional", run("predict", "--run", done, path("other-data")),
         "is a folder, not an image; predict every image in it with --folder"),
        ("predict-topk-zero", run("predict", "--run", done, "--topk", "0", image), "--topk is"),
        ("predict-topk-negative", run("predict", "--run", done, "--topk", "-3", image),
         "--topk is"),
        # -- output paths checked before the work
        ("predict-csv-onto-folder", run("predict", "--run", done, image, "--csv", path("done")),
         "is a folder"),
        ("label-issues-csv-onto-folder",
         run("label-issues", "--run", done, "--csv", path("done")), "is a folder"),
        ("label-issues-csv-under-file",
         run("label-issues", "--run", done, "--csv", path("done/result.json/x.csv")),
         "is a file, not a folder"),
        ("train-out-is-file", lambda w: w.train_args(out="done/result.json"), "is a file"),
        ("train-out-under-file", lambda w: w.train_args(out="done/result.json/sub"),
         "cannot be created"),
        ("report-out-onto-file",
         run("report", "--db", path("other.db"), "--out", path("done/result.json")),
         "is a file; give a folder"),
        ("sweep-runs-dir-is-a-file",
         run("sweep", "--config", "configs/sweeps/tiny.yaml", "--set", lambda w: f"data.root={w.data}",
             "--db", path("sweep.db"), "--runs-dir", path("done/result.json")),
         "--runs-dir"),
        ("sweep-db-under-a-file",
         run("sweep", "--config", "configs/sweeps/tiny.yaml", "--set", lambda w: f"data.root={w.data}",
             "--db", path("done/result.json/s.db")),
         "folder"),
        # -- results stores
        ("store-not-sqlite", run("runs", "list", "--db", path("not-sqlite.db")),
         "not a usable SQLite database"),
        ("store-newer-schema", run("runs", "list", "--db", path("newer.db")),
         "written by a newer visprompt"),
        ("store-other-program", run("runs", "list", "--db", path("other.db")),
         "database of another program"),
        ("store-missing", run("runs", "list", "--db", path("nothing.db")), "not found"),
    ]  # fmt: skip


CASES = _cases()
#: the feature cache's (path, stat) -> content-hash index: a refused command may add
#: entries for images it hashed (never changing what the cache serves); the cached
#: features themselves are still checked
CACHE_INDEX = ("/cache/index",)


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_with_nothing_touched(world, capsys, argv, fragment):
    before = tree_snapshot(world.base, world.data, ignore=CACHE_INDEX)
    code = main(argv(world))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and fragment in err[-1], err
    assert ";" in err[-1], "the message names the fix after a ';'"
    assert tree_snapshot(world.base, world.data, ignore=CACHE_INDEX) == before


def test_unfinished_run_is_usable_on_request_and_says_so(world, capsys, tmp_path):
    assert main(["eval", "--run", str(world.half), "--allow-unfinished", "--quiet"]) == 0
    assert "is unfinished: epoch 1 of 3" in capsys.readouterr().err
    csv = tmp_path / "issues.csv"
    argv = ["label-issues", "--run", str(world.half), "--csv", str(csv), "--allow-unfinished"]
    assert main([*argv, "--quiet"]) == 0
    first = csv.read_text().splitlines()[0]
    assert first.startswith("# run unfinished: epoch 1 of 3")
    out = tmp_path / "pred.csv"
    argv = ["predict", "--run", str(world.half), str(world.image), "--csv", str(out)]
    assert main([*argv, "--allow-unfinished"]) == 0
    assert out.read_text().startswith("# run unfinished: epoch 1 of 3")
    # a finished run's outputs carry no such line
    assert main(["predict", "--run", str(world.done), str(world.image), "--csv", str(out)]) == 0
    assert out.read_text().startswith("path,")


def test_an_unwritable_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    """Root may write anywhere, so the permission itself is simulated."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    with pytest.raises(VispromptError, match="folder .*locked is not writable"):
        ckpt.check_writable(locked / "run", "--out", "folder")
    with pytest.raises(VispromptError, match="--csv .* cannot be written"):
        ckpt.check_writable(locked / "a.csv", "--csv")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("VISPROMPT_CACHE", str(locked))
    over = run_overrides(tmp_path, "coop")
    with pytest.raises(VispromptError, match="feature cache folder .* is not writable"):
        train_run(load_run_config(None, over), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    ckpt.check_writable(tmp_path / "new" / "deeper" / "a.csv", "--csv")  # creatable: fine


def _named_dataset(root: Path, names: list[str]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_demo_backbone_refuses_class_names_it_cannot_read(tmp_path, capsys):
    data = _named_dataset(tmp_path / "animals", ["zebra", "Schnauzer", "circle"])
    argv = ["train", "--quiet", "--out", str(tmp_path / "run")]
    for item in ["backbone.name=demo-tiny", "data.dataset=folder", f"data.root={data}",
                 "data.shots=2", "method.name=coop", "optim.epochs=1"]:  # fmt: skip
        argv += ["--set", item]
    before = tree_snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 of 3 class names contain unknown words: 'Schnauzer' (schnau zer), 'zebra'" in err
    assert "demo-tiny is a toy model" in err and "use a real CLIP checkpoint" in err
    assert tree_snapshot(tmp_path) == before


def test_identical_prompts_are_warned_about_before_training(tmp_path, capsys):
    data = _named_dataset(tmp_path / "shop", ["Cafe", "cafe", "bakery"])
    over = ["backbone.name=tiny-vit", "backbone.device=cpu", "data.dataset=folder",
            f"data.root={data}", "data.shots=2", "method.name=zeroshot"]  # fmt: skip
    argv = ["train", "--quiet", "--out", str(tmp_path / "run")]
    for item in over:
        argv += ["--set", item]
    assert main(argv) == 0
    assert "classes 'Cafe', 'cafe' have identical prompts once tokenized" in capsys.readouterr().err


def test_run_folders_travel_between_working_directories(world, tmp_path, monkeypatch, capsys):
    """Roots and checkpoints are stored absolute; `--root` follows data that moved."""
    monkeypatch.chdir(world.data.parent)
    relative = os.path.relpath(world.data)
    over = run_overrides(Path(relative), "zeroshot", **{"data.cache_dir": "cache"})
    train_run(load_run_config(None, over), tmp_path / "zs", progress=False, log=lambda m: None)
    saved = (tmp_path / "zs" / "config.yaml").read_text()
    assert f"root: {world.data}" in saved and f"cache_dir: {world.data.parent / 'cache'}" in saved
    monkeypatch.chdir(tmp_path)  # elsewhere: the run still finds its data
    assert main(["eval", "--run", str(tmp_path / "zs"), "--json", "--quiet"]) == 0
    first = capsys.readouterr().out
    moved = tmp_path / "moved"
    shutil.copytree(world.data, moved)
    for split in ("test", "train"):
        argv = ["eval", "--run", str(world.done), "--split", split, "--json", "--quiet"]
        assert main(argv) == 0
        here = capsys.readouterr().out
        assert main([*argv, "--root", str(moved)]) == 0
        assert capsys.readouterr().out == here  # the same dataset gives the same numbers
    assert first


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt.atomic_write_text(tmp_path / "a.json", "{}")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        ckpt.atomic_write_text(tmp_path / "b.json", "{}")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)


def test_too_few_shots_says_how_many_went_to_validation(tmp_path, capsys):
    data = _named_dataset(tmp_path / "two", ["circle", "square"])  # 3 training images each
    argv = ["train", "--quiet", "--out", str(tmp_path / "run")]
    for item in ["backbone.name=tiny-vit", "backbone.device=cpu", "data.dataset=folder",
                 f"data.root={data}", "data.shots=3", "method.name=coop"]:  # fmt: skip
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has only 2 training images (3 in the dataset, 1 of them in the validation split)" in err


@pytest.mark.slow  # two `visprompt` subprocesses
def test_library_log_noise_is_kept_out_of_the_cli_output(tmp_path):
    """open_clip logs on the root logger ("WARNING:root:..."); only --verbose shows it."""
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "import visprompt.cli as cli\n"
        "real = cli.cmd_methods\n"
        "def noisy(args):\n"
        "    logging.warning('No pretrained weights loaded for model')\n"
        "    return real(args)\n"
        "cli.cmd_methods = noisy\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code, "methods"], capture_output=True, text=True)
    assert quiet.returncode == 0 and "coop" in quiet.stdout
    assert "No pretrained weights" not in quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-c", code, "--verbose", "methods"], capture_output=True, text=True
    )
    assert "No pretrained weights loaded" in loud.stderr


def test_a_tip_cache_larger_than_memory_says_how_many_fit(world, tmp_path, monkeypatch):
    import visprompt.methods.tip_adapter as tip

    # 16 entries of a 64-d cache at batch 256: 4 * (64 + 4 + 512) = 2320 bytes each
    monkeypatch.setattr(tip, "available_memory", lambda device: 10 * 2320 + 5)
    cfg = load_run_config(None, run_overrides(world.data, "tip-adapter", **{"data.shots": 4}))
    with pytest.raises(VispromptError, match=r"holds 16 entries, but only 10 fit in the") as exc:
        train_run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert "lower data.shots" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(tip, "available_memory", lambda device: 16 * 2320)
    train_run(cfg, tmp_path / "run", progress=False, log=lambda m: None)  # exactly fits


# ---------------------------------------------------------------- scale-out (issue 15)


def _tiny_sweep_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    config = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "tiny.yaml"
    args = ["sweep", "--config", str(config), "--db", str(tmp_path / "r.sqlite"), "--quiet"]
    return [*args, "--set", f"data.root={data}", *extra]


@pytest.mark.parametrize(
    ("fake", "extra", "fragment"),
    [
        ("0", ["--gpus", "0"], "--gpus given but this machine has no CUDA GPU"),
        ("2", ["--gpus", "0,3"], "--gpus names GPU 3, but this machine has 2 (ids 0-1)"),
        ("2", ["--gpus", "0,a"], "is not a list of GPU ids"),
        ("2", ["--gpus", "0", "--runs-per-gpu", "0"], "--runs-per-gpu must be at least 1"),
        ("2", ["--gpus", "0", "--executor", "local"], "leave --gpus out"),
        ("2", ["--gpus", "0", "--jobs", "4"], "with --gpus use --runs-per-gpu"),
        (None, ["--executor", "slurm"], "sbatch, which is not on PATH"),
        (None, ["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm"),
    ],
)
def test_gpu_and_cluster_options_are_refused_before_anything_is_written(
    tmp_path, colour_dataset, monkeypatch, capsys, fake, extra, fragment
):
    from visprompt.experiments.runner.devices import FAKE_GPUS_ENV

    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    if fake:
        monkeypatch.setenv(FAKE_GPUS_ENV, fake)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no sbatch anywhere
    before = tree_snapshot(tmp_path, colour_dataset)
    assert main(_tiny_sweep_args(tmp_path, colour_dataset, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert tree_snapshot(tmp_path, colour_dataset) == before


@pytest.mark.parametrize("option", ["--runs-dir", "--cache-dir"])
def test_an_unwritable_runs_or_cache_dir_is_refused(
    tmp_path, colour_dataset, monkeypatch, capsys, option
):
    """Root may write anywhere, so the permission itself is simulated."""
    locked = tmp_path / "shared"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    args = _tiny_sweep_args(tmp_path, colour_dataset, option, str(locked / "x"))
    assert main([*args, "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{option} {locked / 'x'} cannot be written" in err and "\n" not in err
    assert not (tmp_path / "r.sqlite").exists() and list(locked.iterdir()) == []


def test_a_db_another_sweep_is_collecting_into_is_waited_for_never_corrupted(
    tmp_path, colour_dataset, capsys
):
    import threading

    args = _tiny_sweep_args(tmp_path, colour_dataset, "--collect")
    assert main(args) == 0  # creates the database: 8 runs, none started
    db = tmp_path / "r.sqlite"
    rows = sqlite3.connect(db).execute("SELECT id, status FROM runs ORDER BY id").fetchall()
    assert len(rows) == 8

    def hold(seconds: float, held: threading.Event) -> None:  # another collector's transaction
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    for seconds, timeout, code in ((0.8, "30", 0), (1.5, "0.3", 2)):
        held = threading.Event()
        holder = threading.Thread(target=hold, args=(seconds, held))
        holder.start()
        held.wait()
        started = time.monotonic()
        assert main([*args, "--db-timeout", timeout]) == code
        waited = time.monotonic() - started
        holder.join()
        err = capsys.readouterr().err.strip()
        if code == 0:
            assert waited >= 0.7 and not err  # waited for the lock, then went on
        else:
            assert err.startswith("error: results database") and "is locked by another" in err
            assert "--db-timeout" in err and "\n" not in err
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall() == rows
        conn.close()
