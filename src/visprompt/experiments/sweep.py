"""Sweep files: a base run config and grids of dotted config keys, expanded into runs.

A sweep file is YAML with these top-level keys (any other key is an error):

``name``
    Label stored with every run (default: the file name without extension).
``description``
    Free text.
``base_config``
    Path of a run YAML file (relative to the sweep file) used as the base.
``base``
    A run config written inline; merged over ``base_config`` when both are given.
``grid``
    A mapping of dotted config keys to lists of values; the sweep is their
    Cartesian product, in file order (the last key varies fastest).
``grids``
    Instead of ``grid``: a list of grids whose runs are concatenated. Each item
    has ``grid:`` (as above), an optional ``name:`` and an optional ``set:``
    mapping dotted keys to single values applied before its grid (e.g.
    ``{data.dataset: food101n, noise.type: real}`` for a dataset that needs
    its own settings). YAML anchors (``&common`` / ``*common``) avoid repeating
    shared grids.

A value ``???`` anywhere in the base marks a setting the user must give at the
command line (e.g. ``data.root: ???`` with ``--set data.root=/data``), and
``${...}`` interpolations are resolved per run, after its grid values are set
(e.g. ``data.root: /data/${data.dataset}``). Parsing, overrides, merging and
interpolation are OmegaConf's, through the same functions as ``visprompt train``
(:func:`visprompt.config.compose`).

Command-line ``--set KEY=VALUE`` overrides apply to the base; setting a key
that a grid varies or a grid's ``set:`` fixes is an error (the grid would
silently win).

Every expanded run is validated like a ``visprompt train`` config (names of
methods, datasets and named backbones, value ranges, unknown keys) without
touching the data or the checkpoint files; the first invalid run is reported
with the grid values that produced it. Runs are identified by
:meth:`~visprompt.config.RunConfig.run_id`; duplicates (the same resolved
config from two grids) are kept once.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from visprompt.config import (
    MISSING,
    MissingValueError,
    RunConfig,
    apply_overrides,
    check_override,
    compose,
    load_yaml_node,
    resolve,
    set_value,
    validate_run_config,
)
from visprompt.errors import VispromptError

SWEEP_KEYS = ("name", "description", "base_config", "base", "grid", "grids")
GRID_KEYS = ("name", "set", "grid")


@dataclass(frozen=True)
class SweepRun:
    """One expanded run of a sweep.

    Attributes:
        run_id: the config's :meth:`~visprompt.config.RunConfig.run_id`.
        config: the validated run config.
        point: the dotted keys and values its grid (and the grid's ``set:``) gave it.
        grid: the name of the grid it came from.
    """

    run_id: str
    config: RunConfig
    point: dict[str, Any]
    grid: str

    def describe(self) -> str:
        """``method dataset noise rate seed`` plus any other grid value, for progress lines."""
        c = self.config
        shown = {"method.name", "data.dataset", "noise.type", "noise.rate", "data.seed"}
        extra = " ".join(f"{k}={v}" for k, v in self.point.items() if k not in shown)
        text = (
            f"{c.method.name} {c.data.dataset} {c.noise.type} {c.noise.rate:g} seed {c.data.seed}"
        )
        return f"{text} {extra}".strip()


@dataclass
class Sweep:
    """An expanded sweep: its name, where it came from, its runs and the keys it varies."""

    name: str
    source: str
    runs: list[SweepRun]
    varied: dict[str, list[Any]] = field(default_factory=dict)
    duplicates: int = 0
    #: ``(grid name, runs it added)`` in file order
    grids: list[tuple[str, int]] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read, expand and validate a sweep file; ``overrides`` are ``key.sub=value`` strings.

    Raises:
        VispromptError: a missing or malformed file, an unknown key, an empty
            grid, a ``???`` the overrides do not fill, an override that clashes
            with a grid, or an expanded run that is not a valid config.
    """
    path = Path(path)
    node = load_yaml_node(path, "sweep file", "a sweep YAML file")
    # plain containers for the sweep's own keys; run configs stay unresolved until each
    # run's grid values are set (interpolations may refer to them)
    data = OmegaConf.to_container(node, resolve=False) if node is not None else None
    return parse_sweep(
        data, source=str(path), base_dir=path.parent, default_name=path.stem, overrides=overrides
    )


def parse_sweep(
    data: Any,
    source: str = "<sweep>",
    base_dir: Path | None = None,
    default_name: str = "sweep",
    overrides: list[str] | None = None,
) -> Sweep:
    """Expand the content of a sweep file (see the module docstring) into validated runs."""
    if not isinstance(data, dict):
        raise VispromptError(
            f"sweep file {source} must be a mapping with base: and grid: (or grids:); "
            "see configs/sweeps/ for examples"
        )
    unknown = [str(k) for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise VispromptError(
            f"unknown key {unknown[0]!r} in sweep file {source}; allowed: {', '.join(SWEEP_KEYS)}"
        )
    name = str(data.get("name") or default_name)
    base = _read_base(data, source, base_dir)
    grids = _read_grids(data, source)
    _apply_overrides(base, overrides or [], grids, source)
    runs: list[SweepRun] = []
    seen: set[str] = set()
    duplicates = 0
    varied: dict[str, list[Any]] = {}
    counts: list[tuple[str, int]] = []
    for grid_name, fixed, grid in grids:
        keys = list(grid)
        for key, values in [*((k, [v]) for k, v in fixed.items()), *grid.items()]:
            known = varied.setdefault(key, [])
            known.extend(v for v in values if v not in known)
        before = len(runs)
        for combo in itertools.product(*(grid[k] for k in keys)):
            point = {**fixed, **dict(zip(keys, combo, strict=True))}
            node = copy.deepcopy(base)
            for key, value in point.items():
                set_value(node, key, copy.deepcopy(value))
            cfg = _validate(node, point, name, grid_name)
            run_id = cfg.run_id()
            if run_id in seen:
                duplicates += 1
                continue
            seen.add(run_id)
            runs.append(SweepRun(run_id=run_id, config=cfg, point=point, grid=grid_name))
        counts.append((grid_name, len(runs) - before))
    return Sweep(
        name=name,
        source=source,
        runs=runs,
        varied=varied,
        duplicates=duplicates,
        grids=counts,
    )


def _read_base(data: dict, source: str, base_dir: Path | None) -> DictConfig:
    base = OmegaConf.create({})
    if data.get("base_config") is not None:
        ref = Path(str(data["base_config"])).expanduser()
        if not ref.is_absolute() and base_dir is not None:
            ref = base_dir / ref
        base = compose(ref)
    inline = data.get("base")
    if inline is not None:
        if not isinstance(inline, (dict, DictConfig)) or isinstance(inline, ListConfig):
            raise VispromptError(
                f"base in sweep file {source} must be a mapping of config sections (a run "
                "config written inline)"
            )
        base = OmegaConf.merge(base, compose(inline))
    return base


def _read_grids(data: dict, source: str) -> list[tuple[str, dict[str, Any], dict[str, list]]]:
    """``[(name, fixed dotted values, grid)]`` with every grid checked non-empty."""
    if "grid" in data and "grids" in data:
        raise VispromptError(
            f"sweep file {source} has both grid: and grids:; keep one (put the single grid "
            "into the grids: list)"
        )
    if "grid" in data:
        return [("grid", {}, _check_grid(data["grid"], f"grid in sweep file {source}"))]
    if "grids" not in data:
        raise VispromptError(
            f"sweep file {source} has no grid; add grid: mapping dotted config keys to lists "
            "of values (e.g. method.name: [coop])"
        )
    items = data["grids"]
    if not isinstance(items, list) or not items:
        raise VispromptError(
            f"grids in sweep file {source} is empty; give a list of grids, each with a grid: "
            "mapping"
        )
    out = []
    for i, item in enumerate(items, start=1):
        where = f"grids[{i}] in sweep file {source}"
        if not isinstance(item, dict):
            raise VispromptError(f"{where} must be a mapping with grid: (and optional name:, set:)")
        unknown = [str(k) for k in item if k not in GRID_KEYS]
        if unknown:
            raise VispromptError(
                f"unknown key {unknown[0]!r} in {where}; allowed: {', '.join(GRID_KEYS)}"
            )
        fixed = item.get("set") or {}
        if not isinstance(fixed, dict):
            raise VispromptError(f"set in {where} must map dotted config keys to single values")
        fixed = {str(k): v for k, v in fixed.items()}
        name = str(item.get("name") or i)
        out.append((name, fixed, _check_grid(item.get("grid"), where)))
    return out


def _check_grid(grid: Any, where: str) -> dict[str, list]:
    if grid is None or (isinstance(grid, dict) and not grid):
        raise VispromptError(
            f"the grid of {where} is empty; map dotted config keys to lists of values "
            "(e.g. noise.rate: [0.25, 0.5])"
        )
    if not isinstance(grid, dict):
        raise VispromptError(
            f"the grid of {where} must map dotted config keys to lists of values, not "
            f"{type(grid).__name__}"
        )
    out: dict[str, list] = {}
    for key, values in grid.items():
        if not isinstance(values, list):
            raise VispromptError(
                f"grid key {key!r} in {where} must map to a list of values; write {key}: [{values}]"
            )
        if not values:
            raise VispromptError(
                f"grid key {key!r} in {where} has an empty list; give at least one value"
            )
        if not str(key).strip() or any(not p for p in str(key).split(".")):
            raise VispromptError(f"grid key {key!r} in {where} is not a dotted config key")
        out[str(key)] = values
    return out


def _apply_overrides(
    base: DictConfig, overrides: list[str], grids: list[tuple[str, dict, dict]], source: str
) -> None:
    """Apply ``--set`` overrides to the base; refuse keys that a grid would overwrite."""
    fixed_by_grids = {k for _, fixed, grid in grids for k in (*fixed, *grid)}
    for text in overrides:
        key = check_override(text)
        clash = [k for k in fixed_by_grids if k == key or k.startswith(key + ".")]
        clash += [k for k in fixed_by_grids if key.startswith(k + ".")]
        if clash:
            raise VispromptError(
                f"--set {key} clashes with {clash[0]}, which the sweep file {source} varies or "
                "sets per grid; edit the grid instead"
            )
    apply_overrides(base, overrides)


def _validate(node: DictConfig, point: dict, sweep: str, grid: str) -> RunConfig:
    try:
        raw = resolve(node)
    except MissingValueError as exc:
        raise VispromptError(
            f"sweep {sweep} needs a value for {exc.key} ({MISSING} in the sweep file); pass "
            f"--set {exc.key}=VALUE"
        ) from None
    try:
        cfg = validate_run_config(raw)
        _check_names(cfg)
    except VispromptError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in point.items())
        raise VispromptError(f"sweep {sweep}, grid {grid}, run [{shown}]: {exc}") from None
    return cfg


def _check_names(cfg: RunConfig) -> None:
    """Registry names a run needs (dataset, named backbone): checked without reading files."""
    from visprompt.backbone import BACKBONES
    from visprompt.data import DATASETS

    DATASETS.get(cfg.data.dataset)
    if cfg.backbone.name is not None:
        BACKBONES.get(cfg.backbone.name)
