"""Typed run configuration: a YAML file plus dotted overrides, validated once at the edge.

A run config has the sections ``backbone``, ``data``, ``noise``, ``method``,
``optim``, ``eval``, ``engine``, ``tracking`` and the keys ``precision``, ``seed`` and
``preset``. Each method registers its own pydantic model for its options
(``method.name`` chooses it) and may declare its paper's defaults (e.g.
VisPrompt's batch size 16) that apply wherever the user did not set a value.

``preset: reference`` first sets, wherever the user set nothing, the values in
which each method's *released code* differs from its paper (declared by the
method as ``reference=`` at registration, e.g. NLPrompt's ``ot_cost:
neg_prob``); the default ``preset: paper`` keeps the papers' settings.

``load_run_config(source, overrides)`` is the only entry: train, sweep and demo
all call it (through :func:`compose` and :func:`resolve` for sweeps). Parsing,
``key.sub=value`` overrides, ``${...}`` interpolation, ``???`` required values
and merging are OmegaConf's; validation is pydantic's, once, here. The result is
a :class:`RunConfig`, or a one-line :class:`VispromptError` naming the bad key
and the allowed ones.

This module never imports a method: it reads each method's declared entry
(options model, defaults, :class:`~visprompt.method_spec.Requirements`) from
:data:`visprompt.method_spec.METHOD_REGISTRY`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from yaml import YAMLError

from visprompt.data.noise import NoiseType
from visprompt.errors import VispromptError
from visprompt.method_spec import METHOD_REGISTRY, MethodConfig
from visprompt.options import Section


def absolute_path(path: str | None) -> str | None:
    """``path`` made absolute against the working directory (``~`` expanded).

    Paths are resolved once, at the edge: a run folder's config.yaml then means
    the same files from any working directory (``eval`` from elsewhere, a sweep
    worker, a colleague). Symlinks are kept as given (no ``resolve()``).
    """
    if path is None:
        return None
    return os.path.abspath(os.path.expanduser(str(path)))


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
    #: evaluate on the test split every N epochs (0 = only after the last epoch); logged
    #: only, never used to choose anything
    every: int = Field(0, ge=0)
    #: the model that is tested: ``last`` epoch (CoOp and the noisy-label papers) or
    #: ``best-val``: the epoch of highest accuracy on the validation split with its noisy
    #: labels, evaluated there after each epoch (the test split chooses nothing)
    select: Literal["last", "best-val"] = "last"

    @model_serializer(mode="wrap")
    def _default_selection_left_out(self, handler: Any) -> Any:
        # ``select`` arrived after the first runs: at its default it stays out of the
        # dumped config (config.yaml, and so the run id), so those runs keep their ids
        data = handler(self)
        if isinstance(data, dict) and self.select == "last":
            data.pop("select", None)
        return data


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


class TrackingConfig(Section):
    """Where a run's epochs are also logged; nothing else reads these logs."""

    #: write TensorBoard event files to ``tensorboard/`` in the run folder
    tensorboard: bool = True
    #: MLflow tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``); null: off.
    #: Needs the optional extra: ``pip install 'visprompt[mlflow]'``.
    mlflow: str | None = None
    #: MLflow experiment the run is logged under
    mlflow_experiment: str = Field("visprompt", min_length=1)


class RunConfig(Section):
    backbone: BackboneConfig
    data: DataConfig
    noise: NoiseConfig = NoiseConfig()
    method: SerializeAsAny[MethodConfig]
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()
    tracking: TrackingConfig = TrackingConfig()
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
    ("tracking", None),
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


# ---------------------------------------------------------------- parsing (OmegaConf)

#: OmegaConf's marker of a value the user must give (``data.root: ???``).
MISSING = "???"


def check_override(text: str) -> str:
    """The dotted key of a ``key.sub=value`` override; a malformed one is a one-line error.

    OmegaConf would read ``key`` without ``=`` as ``key: null`` and ``key=`` as an
    empty string; both are mistakes (often an unset shell variable) that would
    silently fall back to a default, so they are refused before OmegaConf sees them.
    """
    if "=" not in text:
        raise VispromptError(f"override {text!r} has no '='; write it as key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise VispromptError(f"override {text!r} has an empty key; write it as key.sub=value")
    if not raw.strip():
        raise VispromptError(
            f"override {text!r} has an empty value; give one ({key.strip()}=VALUE), write "
            f"{key.strip()}=null to ask for the default, or leave the override out"
        )
    return ".".join(parts)


def _check_settable(node: DictConfig, key: str) -> None:
    """Refuse ``a.b=...`` where ``a`` holds a value (OmegaConf would silently replace it)."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        held = OmegaConf.select(node, prefix, default=None, throw_on_missing=False)
        if held is not None and not isinstance(held, DictConfig):
            raise VispromptError(f"cannot set {key}: {prefix} holds a value, not a section")


def set_value(node: DictConfig, key: str, value: Any) -> None:
    """Set dotted ``key`` of ``node`` to ``value`` (creating sections), as an override does."""
    _check_settable(node, key)
    try:
        OmegaConf.update(node, key, value, merge=False, force_add=True)
    except OmegaConfBaseException as exc:
        raise VispromptError(f"cannot set {key}: {_first_line(exc)}") from None


def apply_overrides(node: DictConfig, overrides: Sequence[str]) -> None:
    """Apply ``key.sub=value`` strings to ``node``; values are read as YAML by OmegaConf."""
    for text in overrides:
        key = check_override(text)
        _check_settable(node, key)
        try:
            node.merge_with_dotlist([f"{key}={text.split('=', 1)[1]}"])
        except (OmegaConfBaseException, YAMLError) as exc:
            raise VispromptError(f"override {text!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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


def load_yaml_node(path: str | Path, kind: str, what: str) -> Any:
    """The parsed YAML of ``path`` as OmegaConf nodes (None when empty); one-line errors.

    ``kind`` names the file in errors ("config file", "sweep file"), ``what``
    says what to give instead of a missing one ("a run YAML file").
    """
    path = Path(path)
    if not path.is_file():
        raise VispromptError(f"{kind} not found: {path}; give the path of {what}")
    text = decode_text(path.read_bytes(), f"{kind} {path}")
    try:
        return OmegaConf.create(text) if text.strip() else None
    except YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise VispromptError(f"{kind} {path} is not valid YAML{where}; fix its syntax") from None
    except OmegaConfBaseException as exc:
        raise VispromptError(f"{kind} {path}: {_first_line(exc)}") from None


def compose(
    source: str | Path | Mapping | DictConfig | None, overrides: Sequence[str] = ()
) -> DictConfig:
    """A run config file (or mapping) with ``key.sub=value`` overrides applied, unresolved."""
    if source is None:
        node = OmegaConf.create({})
    elif isinstance(source, (str, Path)):
        node = load_yaml_node(source, "config file", "a run YAML file")
        if node is None:
            node = OmegaConf.create({})
        if not isinstance(node, DictConfig):
            raise VispromptError(
                f"config file {source} must hold a mapping of sections, not a list"
            )
    else:
        node = OmegaConf.create(
            copy.deepcopy(dict(source)) if isinstance(source, Mapping) else source
        )
    apply_overrides(node, overrides)
    return node


class MissingValueError(VispromptError):
    """A ``???`` value nobody gave; ``key`` is its dotted key."""

    def __init__(self, key: str, where: str = "the config") -> None:
        super().__init__(f"missing value for {key} ({MISSING} in {where}); pass --set {key}=VALUE")
        self.key = key


def resolve(node: DictConfig) -> dict:
    """Plain containers with every ``${...}`` resolved; a ``???`` left is a one-line error."""
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise MissingValueError(str(exc.full_key)) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" at {key}" if key else ""
        raise VispromptError(
            f"cannot resolve the config{where}: {_first_line(exc)}; fix the ${{...}} interpolation"
        ) from None


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


def _runs_on_gpu(node: DictConfig) -> bool:
    device = str(OmegaConf.select(node, "backbone.device", default=None) or "auto")
    if device == "auto":
        import torch  # late: parsing a config needs no torch otherwise

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _set_unset(node: DictConfig, values: Mapping[str, Any], gpu_only_on_cpu: bool = False) -> None:
    """Set each dotted key of ``values`` where ``node`` has none: what the user wrote wins.

    ``gpu_only_on_cpu``: a GPU-only precision (the references' fp16) is set only for a
    run that will use a GPU (``preset: reference`` on CPU stays fp32).
    """
    for dotted, value in values.items():
        if OmegaConf.select(node, dotted, default=None) is not None:
            continue
        if (
            gpu_only_on_cpu
            and dotted == "precision"
            and value in GPU_ONLY_PRECISIONS
            and not _runs_on_gpu(node)
        ):
            continue
        set_value(node, dotted, value)


def validate_run_config(raw: Mapping | DictConfig) -> RunConfig:
    """Validate a resolved config (YAML content + overrides) into a :class:`RunConfig`.

    Applies, where the user set nothing: ``preset: reference`` values, then the
    method's paper defaults and noise protocol; then checks the method's
    :class:`~visprompt.method_spec.Requirements` against the other sections.
    """
    node = OmegaConf.create(copy.deepcopy(dict(raw)) if isinstance(raw, Mapping) else raw)
    method_raw = node.get("method")
    if not isinstance(method_raw, DictConfig) or "name" not in method_raw:
        raise VispromptError(
            "missing option 'method.name'; set it to one of: " + ", ".join(METHOD_REGISTRY.names())
        )
    entry = METHOD_REGISTRY.get(str(method_raw["name"]))
    preset = node.get("preset", "paper")
    if preset not in PRESETS:
        raise VispromptError(
            f"unknown preset {preset!r}; choose paper (the papers' settings, the default) or "
            "reference (as each method's released code)"
        )
    if preset == "reference":
        _set_unset(node, entry.reference, gpu_only_on_cpu=True)
    _set_unset(node, {**entry.defaults, "noise.protocol": entry.noise_protocol})
    plain = resolve(node)
    try:
        method_cfg = entry.config_cls(**plain["method"])
    except ValidationError as exc:
        raise VispromptError(
            _format_validation_error(exc, entry.config_cls, prefix="method")
        ) from None
    plain["method"] = {"name": method_cfg.name}
    try:
        config = RunConfig(**plain)
    except ValidationError as exc:
        raise VispromptError(_format_validation_error(exc, RunConfig)) from None
    config.method = method_cfg  # the subclass instance, with its own keys
    check_run_config(config)
    return config


def load_run_config(
    source: str | Path | Mapping | None, overrides: Sequence[str] | None = None
) -> RunConfig:
    """A run YAML (or mapping) with ``key.sub=value`` overrides, validated into a RunConfig.

    The one path from user input to a run config: ``visprompt train``, sweeps and
    the demo all end here.
    """
    return validate_run_config(resolve(compose(source, overrides or ())))


# ---------------------------------------------------------------- cross-section checks


#: Named backbones and open_clip architectures whose image tower is a ResNet: a method
#: that needs ViT patch tokens is refused before anything loads (a checkpoint file's
#: tower is checked again when it is loaded, from the model itself).
def _resnet_named(backbone: BackboneConfig) -> str | None:
    name = (backbone.name or backbone.arch or "").lower()
    return name if name.startswith("rn") or name == "tiny-rn" else None


def check_run_config(config: RunConfig) -> None:
    """Checks that need more than one section: a method's needs, the balanced protocol."""
    req = config.method.requirements()
    resnet = _resnet_named(config.backbone)
    if req.vit is not None and resnet is not None:
        raise VispromptError(req.vit_error(resnet))
    if req.min_epochs is not None and config.optim.epochs < req.min_epochs[0]:
        raise VispromptError(req.min_epochs[1])
    noise, data = config.noise, config.data
    if noise.protocol == "balanced":
        if data.shots is None:
            raise VispromptError(
                "noise.protocol balanced needs a number of shots per class; set data.shots "
                "(e.g. 16) or use noise.protocol relabel"
            )
        if data.allow_fewer:
            raise VispromptError(
                "data.allow_fewer is not available with noise.protocol balanced (every class "
                "gets exactly data.shots slots); lower data.shots or set noise.protocol relabel"
            )
        if noise.type == "asym-semantic":
            raise VispromptError(
                "noise.type asym-semantic is not available with noise.protocol balanced; "
                "choose sym or asym, or set noise.protocol relabel"
            )


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
