"""The finished runs of a results database as the report sees them: records, labels, order.

A :class:`RunRecord` is one finished run, placed by its dataset, noise type and
rate, backbone, shots and noise protocol, with its config flattened to dotted
keys. Runs of one method that differ in any other setting (an ablation switch,
two learning rates) get distinct *labels*, so they are never averaged together:

* the settings named are the dotted keys whose values differ between runs that
  would otherwise share a table cell - what the sweep varied, read from the
  stored configs (nothing here knows a method's options);
* a run's label names the settings in which it departs from the value most of
  the method's runs share (e.g. the full model of a one-switch-at-a-time
  ablation reads plain ``visprompt``, its variants ``visprompt (gate=off)``);
  where no value is more common than the others, every run names it
  (``coop (lr=0.001)``, ``coop (lr=0.002)``). Distinct settings always get
  distinct labels.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from visprompt.config import identity_dict
from visprompt.errors import VispromptError
from visprompt.experiments.store import ResultsStore, backbone_label

#: The row name of the mean over a table's datasets (paper tables).
AVERAGE = "Average"
#: Column order of well-known methods; others follow alphabetically.
METHOD_ORDER = ("zeroshot", "coop", "cocoop", "gce", "ptnl", "joapr", "nlprompt", "visprompt")
#: Row order of noise types.
NOISE_ORDER = ("none", "real", "sym", "asym", "asym-semantic")
#: Config keys that place a run in the table (or are its seeds), never in a method label.
PLACEMENT_KEYS = frozenset(
    {
        "data.dataset",
        "data.root",
        "data.shots",
        "data.seed",
        "seed",
        "noise.type",
        "noise.rate",
        "noise.protocol",
        "method.name",
    }
)


@dataclass
class RunRecord:
    """A finished run as the report sees it.

    Attributes:
        trained: False for a run that trained nothing (``epochs: 0`` in its
            result: the engine only evaluates methods that do not train, so
            their training labels, noisy or not, never reach them). Its
            accuracy holds at every noise setting of its dataset.
        purification: the run's per-epoch purification rows from the store
            (``epoch`` and the clean-split statistics), in epoch order.
        label: the column label (method name plus differing settings), set by
            :func:`assign_labels`.
        selection: how the run chose the model it tested (``eval.select``:
            ``last`` epoch, or ``best-val`` = the epoch best on the noisy
            validation split).
    """

    run_id: str
    method: str
    dataset: str
    noise_type: str
    noise_rate: float
    backbone: str
    shots: int | None
    protocol: str
    seed: Any
    accuracy: float
    flat: dict[str, Any]
    trained: bool = True
    purification: list[dict] = field(default_factory=list)
    label: str = ""
    selection: str = "last"

    @property
    def table_key(self) -> tuple[str, Any, str]:
        """(backbone, shots, protocol): the runs of one paper-style table."""
        return (self.backbone, self.shots, self.protocol)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _matches(value: str, wanted: Sequence[str] | None) -> bool:
    return not wanted or value.lower() in {w.lower() for w in wanted}


def load_records(
    store: ResultsStore,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    run_ids: Collection[str] | None = None,
) -> list[RunRecord]:
    """The finished runs of ``store`` that pass the filters, with labels assigned.

    ``run_ids`` keeps only those runs (e.g. one sweep's runs of a database that
    holds several).

    Raises:
        VispromptError: no finished run, or none passes the filters.
    """
    rows = store.list_runs(status=["done"])
    if not rows:
        raise VispromptError(
            f"results database {store.path} holds no finished runs; run a sweep into it first"
        )
    wanted_ids = None if run_ids is None else set(run_ids)
    records = []
    for row in rows:
        if row["test_accuracy"] is None:  # a non-finite accuracy: nothing to average
            continue
        if wanted_ids is not None and row["id"] not in wanted_ids:
            continue
        config = row["config"]
        result = row["result"] or {}
        backbone = str(result.get("backbone") or backbone_label(config))
        rec = RunRecord(
            run_id=row["id"],
            method=str(row["method"]),
            dataset=str(row["dataset"]),
            noise_type=str(row["noise_type"]),
            noise_rate=float(row["noise_rate"] or 0.0),
            backbone=backbone,
            shots=row["shots"],
            protocol=str((config.get("noise") or {}).get("protocol", "relabel")),
            seed=row["seed"],
            accuracy=float(row["test_accuracy"]),
            # eval.select is left out of a config at its default (run ids stay): put it
            # back, so that a label says select=last where runs of both selections share a cell
            flat={"eval.select": "last", **_flatten(identity_dict(config))},
            # a fitted method (tip-adapter: no epochs) still read its training labels
            trained=result.get("epochs") != 0 or "fit" in result,
            selection=str(
                result.get("selection") or (config.get("eval") or {}).get("select") or "last"
            ),
        )
        if not (
            _matches(rec.dataset, datasets)
            and _matches(rec.method, methods)
            and (_matches(rec.backbone, backbones) or _matches(backbone_label(config), backbones))
        ):
            continue
        rec.purification = store.purification(rec.run_id)
        records.append(rec)
    if not records:
        filters = " ".join(
            f"--{name} {v}"
            for name, values in (
                ("dataset", datasets),
                ("method", methods),
                ("backbone", backbones),
            )
            for v in values or []
        )
        if wanted_ids is not None:
            filters = (filters + f" (and {len(wanted_ids)} chosen run ids)").strip()
        available = (
            f"datasets {', '.join(sorted({r['dataset'] for r in rows}))}; methods "
            f"{', '.join(sorted({r['method'] for r in rows}))}"
        )
        raise VispromptError(
            f"no finished run in {store.path} matches {filters}; the database has {available}"
        )
    assign_labels(records)
    return records


# ---------------------------------------------------------------- labels


def variant_keys(records: Iterable[RunRecord]) -> dict[str, list[str]]:
    """Per method, the dotted keys whose values differ between runs that would share a cell."""
    cells: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        cells[(r.table_key, r.dataset, r.noise_type, r.noise_rate, r.method)].append(r)
    out: dict[str, set[str]] = defaultdict(set)
    for (*_, method), group in cells.items():
        keys = set().union(*(g.flat for g in group))
        for key in keys:
            if key in PLACEMENT_KEYS or key.startswith("backbone."):
                continue
            values = {repr(g.flat.get(key)) for g in group}
            if len(values) > 1:
                out[method].add(key)
    return {m: sorted(keys) for m, keys in out.items()}


def _baseline(runs: list[RunRecord], keys: list[str]) -> dict[str, str]:
    """``key -> repr(value)`` for each key with one value more common than every other."""
    out = {}
    for key in keys:
        ranked = Counter(repr(r.flat.get(key)) for r in runs).most_common()
        if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
            out[key] = ranked[0][0]
    return out


def assign_labels(records: list[RunRecord]) -> dict[str, list[str]]:
    """Set each record's label (see the module docstring); returns :func:`variant_keys`."""
    keys = variant_keys(records)
    baselines = {
        method: _baseline([r for r in records if r.method == method], mine)
        for method, mine in keys.items()
    }
    for r in records:
        mine = keys.get(r.method, [])
        short = short_names(mine)
        base = baselines.get(r.method, {})
        shown = [k for k in mine if base.get(k) != repr(r.flat.get(k))]
        setting = ", ".join(f"{short[k]}={fmt_value(r.flat.get(k))}" for k in shown)
        r.label = f"{r.method} ({setting})" if setting else r.method
    return keys


# ---------------------------------------------------------------- names and order


def short_names(keys: list[str]) -> dict[str, str]:
    """Dotted keys shown by their last part where that is unambiguous (``method.film`` -> ``film``)."""
    last = [k.split(".")[-1] for k in keys]
    return {
        k: (s if last.count(s) == 1 else k.removeprefix("method."))
        for k, s in zip(keys, last, strict=True)
    }


def fmt_value(value: Any) -> str:
    """A setting's value as labels show it: booleans as on/off, None as ``-``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "-" if value is None else str(value)


def fmt_rate(rate: float) -> str:
    """A noise rate as a percentage: ``0.5`` -> ``50%``, ``0.125`` -> ``12.5%``."""
    return f"{rate * 100:g}%"


def method_rank(label: str) -> tuple:
    """Sort key of a label: well-known methods in :data:`METHOD_ORDER`, then by name."""
    base = label.split(" (")[0]
    pos = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (pos, base, label)


def noise_rank(noise: str) -> tuple:
    """Sort key of a noise type: :data:`NOISE_ORDER`, then by name."""
    return (NOISE_ORDER.index(noise) if noise in NOISE_ORDER else len(NOISE_ORDER), noise)


def table_title(key: tuple) -> str:
    """``RN50, 16 shots, relabel noise`` for a (backbone, shots, protocol) key."""
    backbone, shots, protocol = key
    shots_text = "all images" if shots is None else f"{shots} shots"
    return f"{backbone}, {shots_text}, {protocol} noise"
