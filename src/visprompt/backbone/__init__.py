"""The frozen backbone: loading checkpoints, tokenizer, image and prompt encoding."""

from visprompt.backbone.frozen_clip import BackboneIdentity, FrozenCLIP, clip_tokenizer
from visprompt.backbone.loader import BACKBONES, load_backbone, tiny_clip
from visprompt.backbone.prompts import (
    ClassPrompts,
    build_class_prompts,
    clean_classname,
    insert_context,
)

__all__ = [
    "BACKBONES",
    "BackboneIdentity",
    "ClassPrompts",
    "FrozenCLIP",
    "build_class_prompts",
    "clean_classname",
    "clip_tokenizer",
    "insert_context",
    "load_backbone",
    "tiny_clip",
]
from visprompt.backbone import demo as _demo  # noqa: F401
