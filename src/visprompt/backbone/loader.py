"""Load a frozen backbone from local files (never the network unless asked).

Three ways in:

* ``name``: a named backbone from the ``BACKBONES`` registry (the shipped demo
  model, or small generated architectures for tests);
* ``checkpoint`` (+ optional ``arch``): a local file or folder. OpenAI ``.pt``
  files (state dict; TorchScript archives only with ``allow_torchscript=True``,
  because loading one runs code stored in the file), open_clip checkpoints
  (``.pt``/``.bin``/``.safetensors``, with ``state_dict`` wrappers and
  ``module.`` prefixes handled) and Hugging Face folders that open_clip reads.
  Without ``arch`` the architecture of an OpenAI-format state dict is inferred
  from its shapes, as open_clip does.
* ``arch`` + ``download=True``: open_clip's pretrained weights, downloaded on
  explicit request only.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from open_clip.model import build_model_from_openai_state_dict

from visprompt.backbone.frozen_clip import BackboneIdentity, FrozenCLIP
from visprompt.errors import VispromptError
from visprompt.registry import Registry

#: Named backbones: ``name -> factory(device, precision) -> FrozenCLIP``.
BACKBONES: Registry[Callable[..., FrozenCLIP]] = Registry("backbone")

REQUIRED_CLIP_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection")

_HASHES: dict[tuple[str, int, float], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (memoised per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def folder_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
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
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise VispromptError(f"cannot read checkpoint {path}: {exc}") from None
    elif _is_torchscript_archive(path):
        if not allow_torchscript:
            raise VispromptError(
                f"checkpoint {path} is a TorchScript archive, and loading one runs code stored "
                "in the file; if you trust it, set backbone.allow_torchscript=true"
            )
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise VispromptError(
                f"cannot read checkpoint {path} as a weights-only file ({type(exc).__name__}); "
                "give a state dict saved with torch.save, a .safetensors file, or an OpenAI .pt"
            ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
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


def build_from_state_dict(state: dict, arch: str | None, path: Path):
    """An fp32 open_clip model holding ``state``; ``arch=None`` infers an OpenAI layout.

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
    model = open_clip.create_model(arch, pretrained=None, load_weights=False)
    state = open_clip.factory.convert_state_dict(model, dict(state))
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    load_strict(
        model,
        state,
        f"checkpoint {path} does not match architecture {arch!r}",
        "set backbone.arch to the checkpoint's architecture, or leave it out for OpenAI files",
    )
    return model.float(), arch


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
) -> FrozenCLIP:
    """Load a frozen CLIP backbone from a named model or local weights.

    Args:
        name: a registered backbone name (``visprompt backbones`` lists them).
        arch: open_clip architecture name (``RN50``, ``ViT-B-16``, ...). Optional
            for OpenAI-format state dicts, whose architecture is inferred.
        checkpoint: local file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``) or
            a Hugging Face folder with ``open_clip_config.json``.
        allow_torchscript: permit TorchScript archives (they run code when loaded).
        download: permit open_clip to download ``arch``/``pretrained`` weights.
        pretrained: the open_clip pretrained tag used with ``download``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``, ``amp`` (bf16 autocast on GPU) or ``fp16`` (GPU).

    Raises:
        VispromptError: missing files, unknown names, non-CLIP checkpoints,
            shape mismatches, TorchScript without permission.
    """
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
        if not (path / "open_clip_config.json").is_file():
            raise VispromptError(
                f"checkpoint folder {path} has no open_clip_config.json; give a checkpoint file "
                "or a Hugging Face folder that open_clip reads"
            )
        model = open_clip.create_model(f"local-dir:{path.resolve()}")
        fingerprint = folder_sha256(path)
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
