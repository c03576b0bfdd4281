"""Hugging Face ``transformers`` CLIP folders, read without ``transformers``.

A folder that ``transformers.CLIPModel.save_pretrained`` writes holds
``config.json`` (``model_type: "clip"`` with ``text_config`` and
``vision_config``), the weights (``model.safetensors``, ``pytorch_model.bin``
or a sharded set with an ``*.index.json``) and, usually, the image processor's
``preprocessor_config.json``. This module reads those files itself, renames
the weights to open_clip's CLIP layout (the OpenAI layout) and builds the
equivalent ``open_clip.model.CLIP``, so that visprompt never imports
``transformers`` at run time.

How the two layouts correspond, per transformer block ``i`` (text tower under
``text_model.encoder.layers.i``, image tower under ``vision_model.encoder.layers.i``;
the open_clip names are under ``transformer.resblocks.i`` and
``visual.transformer.resblocks.i``):

=====================================  =====================================
Hugging Face                            open_clip
=====================================  =====================================
``self_attn.{q,k,v}_proj.{weight,bias}``  ``attn.in_proj_{weight,bias}`` (q, k, v stacked)
``self_attn.out_proj``                  ``attn.out_proj``
``layer_norm1`` / ``layer_norm2``       ``ln_1`` / ``ln_2``
``mlp.fc1`` / ``mlp.fc2``               ``mlp.c_fc`` / ``mlp.c_proj``
=====================================  =====================================

and for the rest: ``text_model.embeddings.token_embedding`` ->
``token_embedding``, ``text_model.embeddings.position_embedding.weight`` ->
``positional_embedding``, ``text_model.final_layer_norm`` -> ``ln_final``,
``text_projection.weight``ᵀ -> ``text_projection``,
``vision_model.embeddings.{patch_embedding, class_embedding,
position_embedding.weight}`` -> ``visual.{conv1, class_embedding,
positional_embedding}``, ``vision_model.pre_layrnorm`` / ``post_layernorm`` ->
``visual.ln_pre`` / ``visual.ln_post``, ``visual_projection.weight``ᵀ ->
``visual.proj``, ``logit_scale`` unchanged.

Sizes come from the weights' shapes; only what shapes cannot tell is read from
the config (head counts, activation, LayerNorm epsilon, image size, the
end-of-text id), with ``transformers``' defaults where a key is absent (a
``save_pretrained`` config may omit values equal to the default).

Text pooling: open_clip (and visprompt's ``FrozenCLIP``) pool the text tower at
``argmax(token ids)``, which is the end-of-text token of the CLIP tokenizer
(id 49407, the largest id it emits; on ties ``argmax`` takes the first).
``transformers`` pools at ``argmax(input_ids)`` when ``eos_token_id == 2`` (old
configs) and at the first ``eos_token_id`` otherwise; both agree with open_clip
for CLIP-tokenized text when ``eos_token_id`` is 2 or 49407. Any other
``eos_token_id`` means the model pools at a token visprompt's tokenizer never
marks, and such a folder is refused. Both libraries use a causal mask only,
so padding after the end-of-text token never changes the features.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from open_clip.model import CLIP, set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg

from visprompt.errors import VispromptError

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
#: weight files in the order ``transformers`` prefers them
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
#: a sharded checkpoint: an index naming which shard holds each tensor
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

#: ``hidden_act`` -> open_clip's ``quick_gelu`` flag ("gelu" is the exact erf GELU in both)
ACTIVATIONS = {"quick_gelu": True, "gelu": False}

#: ``transformers``' defaults for keys a saved config may leave out (CLIPTextConfig,
#: CLIPVisionConfig): values equal to the default are not always written.
TEXT_DEFAULTS = {
    "num_attention_heads": 8,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
VISION_DEFAULTS = {
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "image_size": 224,
}

#: the CLIP BPE tokenizer's vocabulary and end-of-text id (what FrozenCLIP feeds the model)
CLIP_VOCAB_SIZE = 49408
CLIP_EOT_ID = 49407

_BLOCK_RENAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; unreadable or invalid JSON is a one-line error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VispromptError(
            f"{what} {path} cannot be read as JSON ({type(exc).__name__}: {exc}); "
            "restore the file (e.g. download the folder again)"
        ) from None
    if not isinstance(data, dict):
        raise VispromptError(
            f"{what} {path} holds no JSON object; restore the file (e.g. download it again)"
        )
    return data


def read_config(folder: Path) -> dict:
    """``config.json`` of a ``transformers`` CLIP folder (checked to be ``model_type: clip``)."""
    path = Path(folder) / CONFIG_NAME
    config = read_json(path, "model config")
    model_type = config.get("model_type")
    if model_type != "clip":
        raise VispromptError(
            f"{path} describes model_type {model_type!r}, not a transformers CLIP model "
            "(model_type 'clip'); give a CLIPModel folder, an open_clip folder "
            "(open_clip_config.json) or a checkpoint file"
        )
    return config


def weight_files(folder: Path) -> list[Path] | None:
    """The weight files of a ``transformers`` folder (all shards), or ``None`` if absent."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    for name in INDEX_NAMES:
        index = folder / name
        if index.is_file():
            weight_map = read_json(index, "weights index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise VispromptError(f"weights index {index} has no weight_map; restore the file")
            shards = [folder / shard for shard in sorted(set(weight_map.values()))]
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise VispromptError(
                    f"checkpoint folder {folder} lacks {len(missing)} weight shard(s) named in "
                    f"{name} (first: {missing[0]}); the download is incomplete: fetch the "
                    "missing files"
                )
            return shards
    return None


def _sub_config(config: dict, key: str, defaults: dict) -> dict:
    merged = dict(defaults)
    # ``<key>_dict`` (written by old transformers versions) wins over ``<key>``, as there
    for name in (key, f"{key}_dict"):
        sub = config.get(name)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise VispromptError(f"config.json {name} is not a JSON object; restore the file")
        merged.update(sub)
    return merged


def _quick_gelu(text_cfg: dict, vision_cfg: dict, where: Path) -> bool:
    acts = {}
    for tower, cfg in (("text", text_cfg), ("vision", vision_cfg)):
        act = cfg["hidden_act"]
        if act not in ACTIVATIONS:
            raise VispromptError(
                f"{where} {tower}_config.hidden_act {act!r} is not an activation open_clip's "
                f"CLIP has (supported: {', '.join(ACTIVATIONS)}); use a CLIP folder with one of them"
            )
        acts[tower] = ACTIVATIONS[act]
    if acts["text"] != acts["vision"]:
        raise VispromptError(
            f"{where} uses hidden_act {text_cfg['hidden_act']!r} in the text tower and "
            f"{vision_cfg['hidden_act']!r} in the vision tower, but open_clip's CLIP has one "
            "activation for both; give a folder whose towers share it"
        )
    return acts["text"]


def _layer_count(state: dict, prefix: str) -> int:
    indices = {
        int(key[len(prefix) :].split(".", 1)[0])
        for key in state
        if key.startswith(prefix) and key[len(prefix) :].split(".", 1)[0].isdigit()
    }
    if not indices or indices != set(range(len(indices))):
        raise KeyError(f"{prefix}<i>.*")
    return len(indices)


def _mlp_ratio(hidden: int, width: int) -> float:
    # open_clip sizes the MLP as int(width * mlp_ratio): keep that exactly `hidden`
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _heads(cfg: dict, width: int, tower: str, where: Path) -> int:
    heads = cfg["num_attention_heads"]
    if not isinstance(heads, int) or heads < 1 or width % heads:
        raise VispromptError(
            f"{where} {tower}_config.num_attention_heads {heads!r} does not divide the "
            f"{tower} width {width}; restore config.json"
        )
    return heads


def _convert_blocks(state: dict, src: str, dst: str, layers: int, out: dict) -> None:
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for part in ("weight", "bias"):
            out[f"{d}attn.in_proj_{part}"] = torch.cat(
                [state.pop(f"{s}self_attn.{p}_proj.{part}") for p in ("q", "k", "v")], dim=0
            )
        for hf_name, oc_name in _BLOCK_RENAMES.items():
            out[d + oc_name] = state.pop(s + hf_name)


def convert(config: dict, state: dict, where: Path) -> tuple[dict, dict]:
    """``(open_clip CLIP keyword arguments, open_clip state dict)`` of a CLIPModel.

    ``state`` is the ``transformers`` state dict (consumed); ``where`` names the
    folder in errors.
    """
    text_cfg = _sub_config(config, "text_config", TEXT_DEFAULTS)
    vision_cfg = _sub_config(config, "vision_config", VISION_DEFAULTS)
    quick_gelu = _quick_gelu(text_cfg, vision_cfg, where)
    state = {k: v for k, v in state.items() if not k.endswith(".position_ids")}
    out: dict[str, torch.Tensor] = {}
    try:
        # ---------------------------------------------------------------- text
        token_embedding = state.pop("text_model.embeddings.token_embedding.weight")
        vocab_size, text_width = token_embedding.shape
        out["token_embedding.weight"] = token_embedding
        out["positional_embedding"] = state.pop("text_model.embeddings.position_embedding.weight")
        text_layers = _layer_count(state, "text_model.encoder.layers.")
        text_mlp = state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        _convert_blocks(
            state, "text_model.encoder.layers.", "transformer.resblocks.", text_layers, out
        )
        out["ln_final.weight"] = state.pop("text_model.final_layer_norm.weight")
        out["ln_final.bias"] = state.pop("text_model.final_layer_norm.bias")
        out["text_projection"] = state.pop("text_projection.weight").t().contiguous()
        # -------------------------------------------------------------- vision
        conv = state.pop("vision_model.embeddings.patch_embedding.weight")
        vision_width, patch = conv.shape[0], conv.shape[-1]
        out["visual.conv1.weight"] = conv
        out["visual.class_embedding"] = state.pop("vision_model.embeddings.class_embedding")
        positions = state.pop("vision_model.embeddings.position_embedding.weight")
        out["visual.positional_embedding"] = positions
        out["visual.ln_pre.weight"] = state.pop("vision_model.pre_layrnorm.weight")
        out["visual.ln_pre.bias"] = state.pop("vision_model.pre_layrnorm.bias")
        vision_layers = _layer_count(state, "vision_model.encoder.layers.")
        vision_mlp = state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        _convert_blocks(
            state,
            "vision_model.encoder.layers.",
            "visual.transformer.resblocks.",
            vision_layers,
            out,
        )
        out["visual.ln_post.weight"] = state.pop("vision_model.post_layernorm.weight")
        out["visual.ln_post.bias"] = state.pop("vision_model.post_layernorm.bias")
        out["visual.proj"] = state.pop("visual_projection.weight").t().contiguous()
        out["logit_scale"] = state.pop("logit_scale").reshape(())
    except KeyError as exc:
        raise VispromptError(
            f"checkpoint folder {where} is not a complete transformers CLIPModel (weights lack "
            f"{exc.args[0]}); give a folder saved from CLIPModel with both towers"
        ) from None
    if state:
        raise VispromptError(
            f"checkpoint folder {where} holds weights visprompt cannot map onto open_clip's "
            f"CLIP ({len(state)} unexpected, first: {sorted(state)[0]}); give a plain CLIPModel "
            "folder"
        )
    if vocab_size < CLIP_VOCAB_SIZE:
        raise VispromptError(
            f"checkpoint folder {where} has a text vocabulary of {vocab_size} tokens, fewer than "
            f"the CLIP tokenizer's {CLIP_VOCAB_SIZE} that visprompt uses; give a CLIP folder "
            "with the standard vocabulary"
        )
    eos = text_cfg["eos_token_id"]
    if eos not in (2, CLIP_EOT_ID):
        raise VispromptError(
            f"{where} text_config.eos_token_id {eos!r}: the model pools its text at that token, "
            f"but visprompt's CLIP tokenizer ends every text with {CLIP_EOT_ID}; give a folder "
            "with the standard CLIP end-of-text id"
        )
    grid = math.isqrt(positions.shape[0] - 1)
    image_size = vision_cfg["image_size"]
    if isinstance(image_size, (list, tuple)) and len(set(image_size)) == 1:
        image_size = image_size[0]
    if (
        not isinstance(image_size, int)
        or grid * grid + 1 != positions.shape[0]
        or (image_size // patch != grid)
    ):
        raise VispromptError(
            f"{where} vision_config.image_size {image_size!r} with patch size {patch} does not "
            f"fit the {positions.shape[0]} vision position embeddings; restore config.json"
        )
    kwargs = {
        "embed_dim": int(out["text_projection"].shape[1]),
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "layers": vision_layers,
            "width": int(vision_width),
            "head_width": int(vision_width) // _heads(vision_cfg, vision_width, "vision", where),
            "mlp_ratio": _mlp_ratio(int(vision_mlp), int(vision_width)),
            "patch_size": int(patch),
            "image_size": image_size,
            "norm_kwargs": {"eps": float(vision_cfg["layer_norm_eps"])},
        },
        "text_cfg": {
            "context_length": int(out["positional_embedding"].shape[0]),
            "vocab_size": int(vocab_size),
            "width": int(text_width),
            "heads": _heads(text_cfg, text_width, "text", where),
            "layers": text_layers,
            "mlp_ratio": _mlp_ratio(int(text_mlp), int(text_width)),
            "norm_kwargs": {"eps": float(text_cfg["layer_norm_eps"])},
        },
    }
    return kwargs, out


def preprocess_cfg(folder: Path, image_size: int) -> dict:
    """open_clip's preprocessing config for the folder (mean/std from its image processor).

    Without ``preprocessor_config.json`` the CLIP defaults apply (what
    ``CLIPImageProcessor`` uses too).
    """
    cfg = asdict(PreprocessCfg())
    cfg["size"] = image_size
    path = Path(folder) / PREPROCESSOR_NAME
    if not path.is_file():
        return cfg
    proc = read_json(path, "image processor config")
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
        value = proc.get(theirs, cfg[ours])
        if isinstance(value, (int, float)):
            value = [value] * 3
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(v, (int, float)) for v in value)
            or (ours == "std" and not all(v > 0 for v in value))
        ):
            raise VispromptError(
                f"{path} {theirs} {value!r} is not three numbers{' above 0' if ours == 'std' else ''}"
                "; restore the file"
            )
        cfg[ours] = tuple(float(v) for v in value)
    crop = proc.get("crop_size")
    if isinstance(crop, dict):
        crop = sorted({crop.get("height"), crop.get("width")} - {None})
        crop = crop[0] if len(crop) == 1 else crop
    if crop is not None and crop != image_size and proc.get("do_center_crop", True):
        raise VispromptError(
            f"{path} crops images to {crop!r} but the vision tower takes {image_size} px images; "
            "restore preprocessor_config.json (crop_size must equal vision_config.image_size)"
        )
    return cfg


def load_folder(
    folder: Path, read_state_dict: Callable[[Path], dict]
) -> tuple[torch.nn.Module, list[Path]]:
    """An fp32 open_clip ``CLIP`` equal to the ``transformers`` CLIPModel saved in ``folder``.

    ``read_state_dict`` reads one weight file (safely). Returns the model and the
    files it was built from (for the backbone's fingerprint).
    """
    folder = Path(folder)
    config = read_config(folder)
    files = weight_files(folder)
    if files is None:
        raise VispromptError(
            f"checkpoint folder {folder} has {CONFIG_NAME} but no weights file "
            f"({' or '.join(WEIGHT_NAMES)}); the download may be incomplete: fetch the weights "
            "into the folder"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state_dict(file))
    kwargs, converted = convert(config, state, folder)
    model = CLIP(**kwargs)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).strip().splitlines()[1:3])[:200]
        raise VispromptError(
            f"checkpoint folder {folder} does not map onto open_clip's CLIP ({detail}); give a "
            "plain CLIPModel folder"
        ) from None
    set_model_preprocess_cfg(model, preprocess_cfg(folder, kwargs["vision_cfg"]["image_size"]))
    used = [folder / CONFIG_NAME, *files]
    if (folder / PREPROCESSOR_NAME).is_file():
        used.append(folder / PREPROCESSOR_NAME)
    return model.float().eval(), used
