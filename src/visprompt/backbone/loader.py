"""Load a frozen backbone from local files (never the network unless asked).

Three ways in:

* ``name``: a named backbone from the ``BACKBONES`` registry (the shipped demo
  model, or small generated architectures for tests);
* ``checkpoint`` (+ optional ``arch``): a local file or folder.

  - Files: OpenAI ``.pt`` files (state dict; TorchScript archives only with
    ``allow_torchscript=True``, because loading one runs code stored in the
    file) and open_clip checkpoints (``.pt``/``.pth``/``.bin``/``.safetensors``,
    with ``state_dict`` wrappers and ``module.`` prefixes handled). Without
    ``arch`` the architecture of an OpenAI-layout state dict is inferred from
    its shapes, as open_clip does, and built with QuickGELU.
  - OpenAI weights always get QuickGELU. A state dict in the OpenAI layout
    (``token_embedding.weight``, ``text_projection``, ``visual.proj`` or
    ``visual.attnpool.*``, no ``text.`` tower prefix) stored in fp16, as OpenAI
    ships its weights, is built with QuickGELU whatever ``arch`` says: ``RN50``
    becomes ``RN50-quickgelu`` (or, where open_clip has no such config, the
    architecture is built with ``force_quick_gelu``). An ``arch`` whose sizes
    contradict the file is a one-line error naming both. An fp32 state dict of
    the same layout with an explicit ``arch`` keeps that architecture's
    activation: open_clip's own checkpoints (e.g. LAION's, trained with GELU)
    share the layout, and only ``arch`` tells them apart.
  - Folders: open_clip hub folders (``open_clip_config.json`` +
    ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``, as
    ``timm/*_clip.openai`` and LAION ship them), built from the folder's config
    and preprocessing; and Hugging Face ``transformers`` CLIP folders
    (``config.json`` with ``model_type: clip`` + ``model.safetensors`` or
    ``pytorch_model.bin``, optional ``preprocessor_config.json``), read and
    mapped onto open_clip's CLIP by :mod:`visprompt.backbone.hf_clip` without
    importing ``transformers``. A folder with both is read as an open_clip
    folder (its ``transformers`` files serve only when the open_clip weights
    are missing). A folder whose weights are missing (an interrupted download)
    is refused, never initialised at random.
* ``arch`` + ``download=True``: open_clip's pretrained weights, downloaded on
  explicit request only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, build_model_from_openai_state_dict

from visprompt.backbone import hf_clip
from visprompt.backbone.frozen_clip import BackboneIdentity, FrozenCLIP
from visprompt.errors import VispromptError
from visprompt.registry import Registry

#: Named backbones: ``name -> factory(device, precision) -> FrozenCLIP``.
BACKBONES: Registry[Callable[..., FrozenCLIP]] = Registry("backbone")

REQUIRED_CLIP_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection")

#: the config of an open_clip hub folder, and its weight files in open_clip's order of preference
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)

_HASHES: dict[tuple[str, int, float], str] = {}


def sha256_of_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks (raises OSError)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (memoised per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _HASHES:
        _HASHES[key] = sha256_of_file(path)
    return _HASHES[key]


def folder_sha256(path: Path, files: list[Path] | None = None) -> str:
    """SHA-256 over ``files`` of the folder (default: every file in it), names included."""
    path = Path(path)
    chosen = files if files is not None else [p for p in path.rglob("*") if p.is_file()]
    digest = hashlib.sha256()
    for file in sorted(Path(f) for f in chosen):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VispromptError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VispromptError(
            f"device {device!r} asked for but no CUDA GPU is visible; use device=cpu or auto"
        )
    return dev


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(
            name.split("/", 1)[-1].startswith("code/") or name.endswith("constants.pkl")
            for name in zf.namelist()
        )


def read_state_dict(path: Path, allow_torchscript: bool = False) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file, loaded without running code from it."""
    path = Path(path)
    if _is_torchscript_archive(path):
        # the gate open_clip has not: a TorchScript archive runs code when loaded
        if not allow_torchscript:
            raise VispromptError(
                f"checkpoint {path} is a TorchScript archive, and loading one runs code stored "
                "in the file; if you trust it, set backbone.allow_torchscript=true"
            )
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        # open_clip's reader: safetensors or a weights-only torch.load, a checkpoint's
        # "state_dict" entry, DataParallel's "module." prefix
        try:
            state = open_clip.factory.load_state_dict(str(path), weights_only=True)
        except Exception as exc:  # torch and safetensors raise many error types
            kind = "a safetensors" if path.suffix == ".safetensors" else "a weights-only"
            raise VispromptError(
                f"cannot read checkpoint {path} as {kind} file ({type(exc).__name__}); "
                "give a state dict saved with torch.save, a .safetensors file, or an OpenAI .pt"
            ) from None
    if not isinstance(state, dict) or not state:
        raise VispromptError(f"checkpoint {path} holds no state dict of tensors")
    state = {
        (k[7:] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return state


def _check_clip_keys(state: dict, path: Path) -> None:
    missing = [k for k in REQUIRED_CLIP_KEYS if k not in state]
    has_visual = any(k.startswith("visual.") for k in state)
    if missing or not has_visual:
        what = ", ".join(missing + ([] if has_visual else ["visual.*"]))
        raise VispromptError(
            f"checkpoint {path} is not a CLIP model (missing {what}); give an OpenAI or "
            "open_clip CLIP checkpoint"
        )


def is_openai_layout(state: dict) -> bool:
    """Whether ``state`` is laid out as OpenAI's CLIP (open_clip's ``CLIP`` class shares it)."""
    vision = "visual.proj" in state or any(k.startswith("visual.attnpool.") for k in state)
    return (
        vision
        and all(k in state for k in REQUIRED_CLIP_KEYS)
        and not any(k.startswith("text.") for k in state)
    )


def holds_openai_weights(state: dict) -> bool:
    """OpenAI-layout weights stored in fp16, as OpenAI distributes them (trained with QuickGELU).

    open_clip's own checkpoints share the layout but are saved in fp32.
    """
    return is_openai_layout(state) and any(
        k in state and state[k].dtype == torch.float16
        for k in ("text_projection", "visual.conv1.weight", "visual.proj")
    )


def build_from_state_dict(state: dict, arch: str | None, path: Path):
    """An fp32 open_clip model holding ``state``; ``arch=None`` infers an OpenAI layout.

    OpenAI weights (:func:`holds_openai_weights`) always get QuickGELU: a given
    ``arch`` is replaced by its ``-quickgelu`` config (or built with
    ``force_quick_gelu``), after checking that its sizes fit the file.

    Returns ``(model, arch_name)``. ``path`` only names the source in errors.
    """
    if arch is None:
        try:
            # open_clip builds the inferred architecture in fp16; reload the weights
            # in fp32 so full-precision checkpoints stay exact.
            model = build_model_from_openai_state_dict(dict(state), cast_dtype=None).float()
            model.load_state_dict(state)
        except Exception as exc:
            raise VispromptError(
                f"cannot infer the architecture of {path} ({type(exc).__name__}: {exc}); "
                "set backbone.arch to its open_clip architecture name (e.g. ViT-B-16, RN50)"
            ) from None
        return model.float(), _inferred_arch_name(state)
    _check_arch_known(arch)
    name, force_quick_gelu = arch, False
    if holds_openai_weights(state):
        _check_openai_fits(state, arch, path)
        name, force_quick_gelu = _quickgelu_variant(arch)
    model = _create_without_weights(name, force_quick_gelu=force_quick_gelu)
    load_weights(
        model,
        state,
        f"checkpoint {path} does not match architecture {arch!r}",
        "set backbone.arch to the checkpoint's architecture, or leave it out for OpenAI files",
    )
    return model.float(), (f"{arch}-quickgelu" if force_quick_gelu else name)


def load_weights(model: torch.nn.Module, state: dict, problem: str, fix: str) -> None:
    """Strictly load an open_clip checkpoint's ``state`` into ``model`` (as open_clip does)."""
    state = open_clip.factory.convert_state_dict(model, dict(state))
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    load_strict(model, state, problem, fix)


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Hide open_clip's "Model initialized randomly" warning: the weights load right after."""
    root, quiet = logging.getLogger(), _NoRandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _create_without_weights(name: str, **kwargs) -> torch.nn.Module:
    """``open_clip.create_model`` with no weights loaded and nothing downloaded."""
    with _quiet_random_init():
        return open_clip.create_model(
            name, pretrained=None, load_weights=False, pretrained_text=False, **kwargs
        )


def _quickgelu_variant(arch: str) -> tuple[str, bool]:
    """``(config name, force_quick_gelu)`` that builds ``arch`` with QuickGELU."""
    if (open_clip.get_model_config(arch) or {}).get("quick_gelu", False):
        return arch, False
    variant = f"{arch}-quickgelu"
    if variant in open_clip.list_models():
        return variant, False
    return arch, True


def _openai_sizes(state: dict) -> dict | None:
    """The sizes an OpenAI-layout state dict implies (read as open_clip infers them)."""
    try:
        text = {
            "context_length": int(state["positional_embedding"].shape[0]),
            "vocab_size": int(state["token_embedding.weight"].shape[0]),
            "width": int(state["ln_final.weight"].shape[0]),
            "layers": len(
                {k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}
            ),
        }
        if "visual.proj" in state:
            conv = state["visual.conv1.weight"]
            grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
            vision = {
                "kind": "ViT",
                "width": int(conv.shape[0]),
                "layers": sum(
                    1
                    for k in state
                    if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")
                ),
                "patch_size": int(conv.shape[-1]),
                "image_size": int(conv.shape[-1]) * grid,
            }
        else:
            blocks = tuple(
                len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")})
                for b in (1, 2, 3, 4)
            )
            grid = math.isqrt(state["visual.attnpool.positional_embedding"].shape[0] - 1)
            vision = {
                "kind": "ResNet",
                "width": int(state["visual.layer1.0.conv1.weight"].shape[0]),
                "layers": blocks,
                "image_size": grid * 32,
            }
        return {"embed_dim": int(state["text_projection"].shape[1]), "vision": vision, "text": text}
    except (KeyError, IndexError, ValueError):
        return None


def _arch_sizes(arch: str) -> dict | None:
    """The sizes of an open_clip architecture, comparable with :func:`_openai_sizes`."""
    cfg = open_clip.get_model_config(arch)
    if not cfg:
        return None
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in v or "hf_model_name" in t or cfg.get("custom_text"):
        return {"other": arch}
    vd, td = CLIPVisionCfg(), CLIPTextCfg()
    layers = v.get("layers", vd.layers)
    image_size = v.get("image_size", vd.image_size)
    if isinstance(image_size, (list, tuple)) and len(set(image_size)) == 1:
        image_size = image_size[0]
    vision = {"width": v.get("width", vd.width), "image_size": image_size}
    if isinstance(layers, (list, tuple)):
        vision.update(kind="ResNet", layers=tuple(layers))
    else:
        vision.update(kind="ViT", layers=layers, patch_size=v.get("patch_size", vd.patch_size))
    text = {
        "context_length": t.get("context_length", td.context_length),
        "vocab_size": t.get("vocab_size", td.vocab_size),
        "width": t.get("width", td.width),
        "layers": t.get("layers", td.layers),
    }
    return {"embed_dim": cfg.get("embed_dim"), "vision": vision, "text": text}


def _describe(sizes: dict) -> str:
    if "other" in sizes:
        return "a timm or Hugging Face tower"
    v = sizes["vision"]
    layers = v["layers"] if v["kind"] == "ViT" else tuple(v["layers"])
    patch = f"/{v['patch_size']}" if v["kind"] == "ViT" else ""
    return (
        f"{v['kind']}{patch} {layers} layers x {v['width']} wide at {v['image_size']} px, "
        f"text {sizes['text']['layers']} x {sizes['text']['width']}, embed {sizes['embed_dim']}"
    )


def _openai_arch_name(sizes: dict) -> str | None:
    """The open_clip architecture name with exactly these sizes (``RN50`` over ``RN50-quickgelu``)."""
    names = [m for m in open_clip.list_models() if _arch_sizes(m) == sizes]
    names.sort(key=lambda m: (m.endswith("-quickgelu"), len(m), m))
    return names[0] if names else None


def _check_openai_fits(state: dict, arch: str, path: Path) -> None:
    """One-line error when ``arch``'s sizes contradict the OpenAI weights in ``state``."""
    file_sizes, arch_sizes = _openai_sizes(state), _arch_sizes(arch)
    if file_sizes is None or arch_sizes is None or file_sizes == arch_sizes:
        return  # the strict load reports anything left
    known = _openai_arch_name(file_sizes)
    what = f"{known} ({_describe(file_sizes)})" if known else _describe(file_sizes)
    fix = f"set backbone.arch={known}" if known else "set backbone.arch to the file's architecture"
    raise VispromptError(
        f"checkpoint {path} holds OpenAI {what} weights, but backbone.arch is {arch!r} "
        f"({_describe(arch_sizes)}); {fix}, or leave backbone.arch out to infer it from the file"
    )


def load_strict(model: torch.nn.Module, state: dict, problem: str, fix: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is one-line ``problem (detail); fix``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch lists every missing/unexpected key; the first two lines say enough.
        first = str(exc).strip().splitlines()
        detail = " ".join(first[1:3]) if len(first) > 1 else first[0]
        raise VispromptError(f"{problem} ({detail[:200]}); {fix}") from None


def _inferred_arch_name(state: dict) -> str:
    if "visual.proj" in state:
        patch = state["visual.conv1.weight"].shape[-1]
        width = state["visual.conv1.weight"].shape[0]
        layers = sum(1 for k in state if k.startswith("visual.") and k.endswith("in_proj_weight"))
        return f"openai-vit-w{width}-l{layers}-p{patch}"
    width = state["visual.layer1.0.conv1.weight"].shape[0]
    return f"openai-rn-w{width}"


def _check_arch_known(arch: str) -> None:
    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(arch.lower()[:4])]
        hint = f" (similar: {', '.join(close[:6])})" if close else ""
        raise VispromptError(
            f"unknown open_clip architecture {arch!r}{hint}; see open_clip.list_models()"
        )
    _check_drivable(open_clip.get_model_config(arch) or {}, f"open_clip architecture {arch!r}")


def _check_drivable(model_cfg: dict, what: str) -> None:
    """One-line error for an open_clip config whose text tower FrozenCLIP cannot drive.

    FrozenCLIP feeds the CLIP BPE tokenizer's ids to a causal text transformer
    pooled at the end-of-text token; Hugging Face text towers (which would also
    be fetched from the network), other tokenizers and other poolings do not fit.
    """
    text = model_cfg.get("text_cfg") or {}
    reasons = [
        f"{key} {text[key]!r}" for key in ("hf_model_name", "hf_tokenizer_name") if text.get(key)
    ]
    if text.get("pool_type", "argmax") != "argmax":
        reasons.append(f"text pool_type {text['pool_type']!r}")
    if model_cfg.get("custom_text") or model_cfg.get("multimodal_cfg"):
        reasons.append("a custom text tower")
    if reasons:
        raise VispromptError(
            f"{what} has {', '.join(reasons)}, which visprompt cannot drive (it needs CLIP's "
            "causal text transformer with the CLIP tokenizer and end-of-text pooling); use a "
            "CLIP architecture such as RN50 or ViT-B-16"
        )


def _load_open_clip_folder(path: Path, weights: Path) -> torch.nn.Module:
    """An open_clip hub folder: the model its config describes, holding its weights."""
    config = hf_clip.read_json(path / OPEN_CLIP_CONFIG, "open_clip config")
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise VispromptError(
            f"open_clip config {path / OPEN_CLIP_CONFIG} has no model_cfg object; restore the "
            "file (e.g. download the folder again)"
        )
    _check_drivable(model_cfg, f"open_clip folder {path}")
    state = read_state_dict(weights)
    try:
        model = _create_without_weights(f"local-dir:{path.resolve()}")
    except Exception as exc:  # the config is user data: any failure is a broken config
        raise VispromptError(
            f"open_clip cannot build the model {path / OPEN_CLIP_CONFIG} describes "
            f"({type(exc).__name__}: {str(exc)[:200]}); restore the file"
        ) from None
    load_weights(
        model,
        state,
        f"weights {weights} do not match the architecture in {OPEN_CLIP_CONFIG}",
        "restore the folder (config and weights from the same model)",
    )
    return model.float()


def _complete_hf_clip(path: Path) -> bool:
    try:
        hf_clip.read_config(path)
        return hf_clip.weight_files(path) is not None
    except VispromptError:
        return False


def load_folder(path: Path) -> tuple[torch.nn.Module, list[Path]]:
    """The fp32 open_clip model in a checkpoint folder, and the files it was read from.

    open_clip hub folders are preferred; a ``transformers`` CLIP folder is read
    otherwise (or when the open_clip weights are missing but complete
    ``transformers`` ones are there, as in repositories that ship both).
    """
    path = Path(path)
    oc_config = path / OPEN_CLIP_CONFIG
    oc_weights = next((path / n for n in OPEN_CLIP_WEIGHTS if (path / n).is_file()), None)
    has_oc, has_hf = oc_config.is_file(), (path / hf_clip.CONFIG_NAME).is_file()
    if has_oc and oc_weights is not None:
        return _load_open_clip_folder(path, oc_weights), [oc_config, oc_weights]
    if has_hf and (not has_oc or _complete_hf_clip(path)):
        return hf_clip.load_folder(path, read_state_dict)
    if has_oc:
        hf_clip.read_json(oc_config, "open_clip config")  # a damaged config is said first
        raise VispromptError(
            f"checkpoint folder {path} has {OPEN_CLIP_CONFIG} but no weights file "
            f"({OPEN_CLIP_WEIGHTS[0]} or {OPEN_CLIP_WEIGHTS[2]}); the download may be "
            "incomplete: fetch the weights into the folder"
        )
    raise VispromptError(
        f"checkpoint folder {path} has neither {OPEN_CLIP_CONFIG} (open_clip) nor "
        f"{hf_clip.CONFIG_NAME} (Hugging Face transformers CLIP); give a checkpoint file or "
        "one of those folders"
    )


def wrap_frozen(
    model, identity: BackboneIdentity, device: torch.device, precision: str
) -> FrozenCLIP:
    """Move ``model`` to ``device`` in ``precision`` and freeze it as a :class:`FrozenCLIP`."""
    if precision not in ("fp32", "fp16", "amp"):
        raise VispromptError(f"unknown precision {precision!r}; choose fp32, amp or fp16")
    if precision == "fp16":
        if device.type != "cuda":
            raise VispromptError("precision fp16 needs a GPU; use precision=fp32 on CPU")
        model = model.half()
    return FrozenCLIP(model.to(device), identity, precision=precision)


def load_backbone(
    name: str | None = None,
    arch: str | None = None,
    checkpoint: str | Path | None = None,
    allow_torchscript: bool = False,
    download: bool = False,
    pretrained: str = "openai",
    device: str = "auto",
    precision: str = "fp32",
    text_encoding: str = "shared-prefix",
    chunk_size: int | None = None,
) -> FrozenCLIP:
    """Load a frozen CLIP backbone from a named model or local weights.

    Args:
        name: a registered backbone name (``visprompt backbones`` lists them).
        arch: open_clip architecture name (``RN50``, ``ViT-B-16``, ...). Optional
            for OpenAI-format state dicts, whose architecture is inferred; OpenAI
            (fp16) weights get the name's QuickGELU variant (``RN50`` ->
            ``RN50-quickgelu``). For folders it only names the backbone.
        checkpoint: a local file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``:
            OpenAI state dicts or TorchScript archives, open_clip checkpoints), an
            open_clip hub folder (``open_clip_config.json`` +
            ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``) or a
            Hugging Face ``transformers`` CLIP folder (``config.json`` +
            ``model.safetensors`` / ``pytorch_model.bin``, optional
            ``preprocessor_config.json`` for the image mean and std).
        allow_torchscript: permit TorchScript archives (they run code when loaded).
        download: permit open_clip to download ``arch``/``pretrained`` weights.
        pretrained: the open_clip pretrained tag used with ``download``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``, ``amp`` (bf16 autocast on GPU) or ``fp16`` (GPU).
        text_encoding, chunk_size: how the text tower runs (``engine.text_encoding``,
            ``engine.chunk_size``); fixed here, once: they never change a result.

    Raises:
        VispromptError: missing files (a folder without its weights included),
            unreadable or invalid configs, unknown names, non-CLIP checkpoints,
            activations open_clip's CLIP lacks, an ``arch`` that contradicts the
            file, shape mismatches, TorchScript without permission.
    """
    backbone = _load_frozen(
        name, arch, checkpoint, allow_torchscript, download, pretrained, device, precision
    )
    return backbone.with_engine(text_encoding=text_encoding, chunk_size=chunk_size)


def _load_frozen(
    name: str | None,
    arch: str | None,
    checkpoint: str | Path | None,
    allow_torchscript: bool,
    download: bool,
    pretrained: str,
    device: str,
    precision: str,
) -> FrozenCLIP:
    dev = resolve_device(device)
    if name is not None:
        if checkpoint is not None or arch is not None:
            raise VispromptError(
                "give either backbone.name or backbone.arch/backbone.checkpoint, not both"
            )
        return BACKBONES.get(name)(device=dev, precision=precision)
    if checkpoint is None:
        if arch is None:
            raise VispromptError(
                "no backbone given; set backbone.name (e.g. demo-tiny) or backbone.checkpoint"
            )
        if not download:
            raise VispromptError(
                f"no checkpoint for {arch!r}; set backbone.checkpoint to a local file, or "
                "backbone.download=true to let open_clip download its weights"
            )
        _check_arch_known(arch)
        model = open_clip.create_model(arch, pretrained=pretrained)
        identity = BackboneIdentity(
            name=arch, arch=arch, fingerprint=f"open_clip:{arch}:{pretrained}", source=pretrained
        )
        return wrap_frozen(model.float(), identity, dev, precision)

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise VispromptError(
            f"checkpoint not found: {path.resolve()}; set backbone.checkpoint to an existing "
            "local file (nothing is downloaded unless backbone.download=true)"
        )
    if path.is_dir():
        model, files = load_folder(path)
        fingerprint = folder_sha256(path, files)
        arch_name = arch or path.name
    else:
        state = read_state_dict(path, allow_torchscript=allow_torchscript)
        _check_clip_keys(state, path)
        model, arch_name = build_from_state_dict(state, arch, path)
        fingerprint = file_sha256(path)
    identity = BackboneIdentity(
        name=arch_name, arch=arch_name, fingerprint=fingerprint, source=str(path.resolve())
    )
    return wrap_frozen(model, identity, dev, precision)


def tiny_clip(vision: str = "vit", seed: int = 0) -> torch.nn.Module:
    """A small random open_clip CLIP with the real tokenizer's vocabulary.

    ``vision="vit"``: ViT 2 layers x 64 wide, 32 px images, 8 px patches;
    ``vision="rn"``: ModifiedResNet (1, 1, 1, 1) x 8 wide on 64 px images.
    The text tower is 2 layers x 64 wide (1 head of 64, as OpenAI's layout
    implies), embedding 32. The weights are a fixed function of ``seed``.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    if vision == "vit":
        vision_cfg = CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=32)
    elif vision == "rn":
        vision_cfg = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=64, image_size=64)
    else:
        raise ValueError(f"unknown tiny vision tower {vision!r}")
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
    model = CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)
    return model.eval()


def _register_tiny(name: str, vision: str) -> None:
    @BACKBONES.register(name)
    def _factory(device: torch.device, precision: str = "fp32") -> FrozenCLIP:
        identity = BackboneIdentity(name=name, arch=name, fingerprint=f"generated:{name}:seed0")
        return wrap_frozen(tiny_clip(vision), identity, device, precision)


_register_tiny("tiny-vit", "vit")
_register_tiny("tiny-rn", "rn")
