"""Typed run configuration: a YAML file plus dotted overrides, validated once at the edge.

A run config has the sections ``backbone``, ``data``, ``noise``, ``method``,
``optim``, ``eval``, ``engine`` and the keys ``precision``, ``seed`` and
``preset``. Each method registers its own pydantic model for its options
(``method.name`` chooses it) and may declare its paper's defaults (e.g.
VisPrompt's batch size 16) that apply wherever the user did not set a value.

``preset: reference`` first sets, wherever the user set nothing, the values in
which each method's *released code* differs from its paper (declared by the
method as ``reference=`` at registration, e.g. NLPrompt's ``ot_cost:
neg_prob``); the default ``preset: paper`` keeps the papers' settings.

``load_run_config(path, overrides)`` is the only entry: it reads the YAML,
applies ``--set a.b=value`` overrides (values parsed as YAML scalars), merges
method defaults and returns a validated :class:`RunConfig`, or raises a
one-line :class:`VispromptError` naming the bad key and the allowed ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from visprompt.errors import VispromptError


def absolute_path(path: str | None) -> str | None:
    """``path`` made absolute against the working directory (``~`` expanded).

    Paths are resolved once, at the edge: a run folder's config.yaml then means
    the same files from any working directory (``eval`` from elsewhere, a sweep
    worker, a colleague). Symlinks are kept as given (no ``resolve()``).
    """
    if path is None:
        return None
    return os.path.abspath(os.path.expanduser(str(path)))


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    # allow_inf_nan=False: `lr: nan` passes a `> 0` check (every comparison with NaN is
    # False) and then poisons the weights at the first step; no option is meant to be
    # non-finite, so NaN and infinity are refused everywhere at parse time.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


class BackboneConfig(Section):
    """Which frozen model: a named one (``name``) or local weights (``checkpoint`` [+ ``arch``])."""

    name: str | None = None
    arch: str | None = None
    checkpoint: str | None = None
    allow_torchscript: bool = False
    download: bool = False
    pretrained: str = "openai"
    device: str = "auto"

    @field_validator("checkpoint")
    @classmethod
    def _absolute_checkpoint(cls, v: str | None) -> str | None:
        return absolute_path(v)

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
        if self.name is None and self.checkpoint is None and not (self.arch and self.download):
            raise ValueError(
                "set backbone.name (e.g. demo-tiny) or backbone.checkpoint (a local file)"
            )
        if self.name is not None and (self.checkpoint is not None or self.arch is not None):
            raise ValueError("give either backbone.name or backbone.arch/checkpoint, not both")
        return self


class DataConfig(Section):
    dataset: str
    root: str | None = None
    shots: int | None = Field(16, description="images per class for training; null = all")
    val_shots: int | None = None
    seed: int = 1
    allow_fewer: bool = False
    #: CSV datasets: keep images listed more than once (exact repeats dropped) instead
    #: of refusing them; see visprompt.data.datasets.csv_dataset
    allow_duplicates: bool = False
    #: augmented views per training image in the frozen-feature cache
    num_views: int = Field(10, ge=1)
    #: (min, max) image-area fraction of the training random resized crop
    #: (Dassl's INPUT.RRCROP_SCALE); raise min for small objects in small images
    crop_scale: tuple[float, float] = (0.08, 1.0)
    #: fraction of unreadable images tolerated per split before failing
    max_unreadable: float = Field(0.01, ge=0.0, le=1.0)
    cache_dir: str | None = None
    num_workers: int = Field(0, ge=0)

    @field_validator("root", "cache_dir")
    @classmethod
    def _absolute_paths(cls, v: str | None) -> str | None:
        return absolute_path(v)

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(
                f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(v)}; "
                "the default is [0.08, 1.0]"
            )
        return v

    @field_validator("shots")
    @classmethod
    def _shots_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("data.shots must be at least 1 (or null for all images)")
        return v


NoiseType = Literal["none", "real", "sym", "asym", "asym-semantic"]


class NoiseConfig(Section):
    type: NoiseType = "none"
    rate: float = 0.0
    protocol: Literal["relabel", "balanced"] = "relabel"
    #: balanced protocol only: a class pool too small for its draw is drawn with
    #: replacement (``replacement``, as PTNL/JoAPR; the run reports the duplicates) or
    #: is an error (``strict``: no image twice). See :mod:`visprompt.data.protocols`.
    pool_draw: Literal["replacement", "strict"] = "replacement"

    @field_validator("rate")
    @classmethod
    def _rate_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"noise.rate must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _rate_matches_type(self) -> NoiseConfig:
        if self.type in ("none", "real") and self.rate != 0.0:
            raise ValueError(
                f"noise.type {self.type} injects no noise, so noise.rate must be 0; "
                "choose sym, asym or asym-semantic to inject noise"
            )
        return self


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.002
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = 50
    batch_size: int = 32
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, gt=0)
    #: skip each loader's last partial batch when it has a full one, as the
    #: references' Dassl train loaders do (every trained method here follows one);
    #: false trains on every sample every epoch
    drop_last: bool = True

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"optim.lr must be > 0, got {v}")
        return v

    @field_validator("epochs")
    @classmethod
    def _epochs_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"optim.epochs must be at least 1, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"optim.batch_size must be at least 1, got {v}")
        return v


class EvalConfig(Section):
    #: evaluate on the test split every N epochs (0 = only after the last epoch)
    every: int = Field(0, ge=0)


class EngineConfig(Section):
    """How the work is done; none of these change a run's numbers beyond float error."""

    #: at most this many prompt sequences per text-encoder call (bounds memory)
    chunk_size: int = Field(1024, ge=1)
    #: batch size of no-gradient passes (evaluation, purification, feature extraction)
    batch_size: int = Field(256, ge=1)
    #: ``shared-prefix`` (exact; class-token-at-end prompts), ``truncated`` (cut at EOT)
    text_encoding: Literal["shared-prefix", "truncated"] = "shared-prefix"
    #: torch CPU threads (null: torch's default). On a machine shared with other
    #: jobs, fewer threads than cores avoid stalls on the many small operations;
    #: another thread count changes the last bits of float sums.
    threads: int | None = Field(None, ge=1)


class MethodConfig(Section):
    """Base of every method's options; subclasses add their own keys."""

    name: str


class RunConfig(Section):
    backbone: BackboneConfig
    data: DataConfig
    noise: NoiseConfig = NoiseConfig()
    method: SerializeAsAny[MethodConfig]
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()
    precision: Literal["fp32", "amp", "fp16"] = "fp32"
    #: ``paper`` (the papers' settings) or ``reference`` (as each method's released code)
    preset: Literal["paper", "reference"] = "paper"
    #: seed of initialisation and training order; noise and few-shot use data.seed
    seed: int | None = None
    #: recompute image features every step from fresh augmentations (reference behaviour)
    use_cache: bool = True

    @property
    def train_seed(self) -> int:
        return self.data.seed if self.seed is None else self.seed

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def run_id(self) -> str:
        """Stable identity of a run: hash of its resolved config (16 hex digits)."""
        payload = json.dumps(identity_dict(self.to_dict()), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: Keys that do not change a run's result and so are left out of its identity.
NON_IDENTITY_KEYS = (
    ("data", "cache_dir"),
    ("data", "num_workers"),
    ("backbone", "device"),
    ("engine", None),
    # a label: the values a preset sets are in the resolved config themselves
    ("preset", None),
)


def identity_dict(config: dict) -> dict:
    out = copy.deepcopy(config)
    for section, key in NON_IDENTITY_KEYS:
        if key is None:
            out.pop(section, None)
        else:
            out.get(section, {}).pop(key, None)
    return out


# ---------------------------------------------------------------- parsing


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.001"`` -> (["optim", "lr"], 0.001); the value is a YAML scalar/list."""
    if "=" not in text:
        raise VispromptError(f"override {text!r} has no '='; write it as key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise VispromptError(f"override {text!r} has an empty key; write it as key.sub=value")
    if not raw.strip():
        # An empty value (often an unset shell variable) would read as null and silently
        # fall back to the default, discarding what the YAML file says.
        raise VispromptError(
            f"override {text!r} has an empty value; give one ({key.strip()}=VALUE), write "
            f"{key.strip()}=null to ask for the default, or leave the override out"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return parts, value


def set_dotted(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise VispromptError(
                f"cannot set {'.'.join(parts)}: {part} holds a value, not a section"
            )
        node = nxt
    node[parts[-1]] = value


def get_dotted(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def decode_text(data: bytes, what: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is fine); anything else is a one-line error.

    Windows editors save UTF-16 (with a byte-order mark) or a legacy code page such as
    Latin-1; guessing the code page could silently change a path or a class name, so
    the file must be re-saved as UTF-8.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise VispromptError(f"{what} is UTF-16 text; save it as UTF-8 (e.g. in your editor)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise VispromptError(
            f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}, perhaps "
            "Latin-1 or Windows-1252); save it as UTF-8"
        ) from None


def load_yaml_file(path: str | Path, kind: str, what: str):
    """The parsed YAML of ``path``; a missing file or bad syntax is a one-line error.

    ``kind`` names the file in errors ("config file", "sweep file"), ``what``
    says what to give instead of a missing one ("a run YAML file").
    """
    path = Path(path)
    if not path.is_file():
        raise VispromptError(f"{kind} not found: {path}; give the path of {what}")
    try:
        return yaml.safe_load(decode_text(path.read_bytes(), f"{kind} {path}"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise VispromptError(f"{kind} {path} is not valid YAML{where}; fix its syntax") from None


def read_yaml(path: str | Path) -> dict:
    data = load_yaml_file(path, "config file", "a run YAML file") or {}
    if not isinstance(data, dict):
        raise VispromptError(f"config file {path} must hold a mapping of sections, not a list")
    return data


def _format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or "config"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return f"unknown option {key!r}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        if len(loc) == 1 and loc[0] in ("backbone", "data", "method"):
            example = {"backbone": "name=demo-tiny", "data": "dataset=...", "method": "name=coop"}
            return (
                f"missing section {key!r}; add it to the config (e.g. --set {key}.{example[key]})"
            )
        return f"missing option {key!r}; add it to the config or pass --set {key}=..."
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "finite_number":
        msg = "must be a finite number (NaN and infinity are not allowed); give a number"
    given = err.get("input")
    hide = isinstance(given, (dict, list)) or "got" in msg
    shown = "" if hide else f" (got {given!r})"
    # pydantic's own messages say what is wrong but not what to do
    fix = "" if ";" in msg else f"; correct {key} in the config file or with --set {key}=..."
    return f"bad value for {key!r}: {msg}{shown}{fix}"


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
        args = getattr(current, "__args__", None)
        if args:  # Optional[Section]
            current = next((a for a in args if isinstance(a, type)), current)
    return sorted(getattr(current, "model_fields", {}).keys())


#: ``preset`` values: the papers' settings, or each method's released code.
PRESETS = ("paper", "reference")
#: Precisions that only exist on a GPU: a reference preset asking for one keeps fp32 on CPU.
GPU_ONLY_PRECISIONS = ("fp16",)


def _runs_on_gpu(raw: dict) -> bool:
    device = str(get_dotted(raw, "backbone.device") or "auto")
    if device == "auto":
        import torch  # late: parsing a config needs no torch otherwise

        return torch.cuda.is_available()
    return device.startswith("cuda")


def apply_reference_preset(raw: dict, reference: dict) -> None:
    """Set a method's released-code values (``MethodEntry.reference``) where ``raw`` has none.

    What the user wrote always wins. A GPU-only precision (the references' fp16)
    is set only for a run that will use a GPU; on CPU the run stays fp32.
    """
    for dotted, value in reference.items():
        if get_dotted(raw, dotted) is not None:
            continue
        if dotted == "precision" and value in GPU_ONLY_PRECISIONS and not _runs_on_gpu(raw):
            continue
        set_dotted(raw, dotted.split("."), value)


def validate_run_config(raw: dict) -> RunConfig:
    """Validate a plain dict (YAML content + overrides) into a :class:`RunConfig`."""
    from visprompt.methods import METHOD_REGISTRY  # late: methods import config

    raw = copy.deepcopy(raw)
    method_raw = raw.get("method")
    if not isinstance(method_raw, dict) or "name" not in method_raw:
        raise VispromptError(
            "missing option 'method.name'; set it to one of: " + ", ".join(METHOD_REGISTRY.names())
        )
    entry = METHOD_REGISTRY.get(str(method_raw["name"]))
    preset = raw.get("preset", "paper")
    if preset not in PRESETS:
        raise VispromptError(
            f"unknown preset {preset!r}; choose paper (the papers' settings, the default) or "
            "reference (as each method's released code)"
        )
    if preset == "reference":
        apply_reference_preset(raw, entry.reference)
    try:
        method_cfg = entry.config_cls(**method_raw)
    except ValidationError as exc:
        raise VispromptError(
            _format_validation_error(exc, entry.config_cls, prefix="method")
        ) from None
    for dotted, value in entry.defaults.items():
        if get_dotted(raw, dotted) is None:
            set_dotted(raw, dotted.split("."), value)
    raw["method"] = {"name": method_cfg.name}
    try:
        config = RunConfig(**raw)
    except ValidationError as exc:
        raise VispromptError(_format_validation_error(exc, RunConfig)) from None
    config.method = method_cfg  # the subclass instance, with its own keys
    entry.check(config)
    return config


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run YAML, apply ``key.sub=value`` overrides, validate, return a RunConfig."""
    raw = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        parts, value = parse_override(text)
        set_dotted(raw, parts, value)
    return validate_run_config(raw)


def config_from_dict(raw: dict) -> RunConfig:
    """Validate an already-resolved config dict (e.g. a run folder's config.yaml)."""
    return validate_run_config(raw)


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for key in keys:
        name = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_configs(va, vb, prefix=f"{name}."))
        elif va != vb:
            out.append(name)
    return out
