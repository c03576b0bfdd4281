"""The base of methods that train on frozen features only (no text-encoder pass per step).

Adapters and probes (TaskRes, CLIP-Adapter, ZS-LP, CLAP) learn a small head on
the cached L2-normalised image features against the zero-shot classifier of the
dataset's hand-written templates (:func:`~visprompt.methods.zeroshot.zero_shot_weights`),
computed once when the method is built. A step costs no text-encoder work at all.

Shared departure from the references: they train on freshly augmented images
each step and, for TaskRes and CLAP, anchor to the *unnormalised* mean text
feature; here a step reads one of the cached augmented views (``data.num_views``)
and every text anchor is L2-normalised, so a residual or a penalty weight acts
on unit vectors. The README's method table lists these methods as "features only".
"""

from __future__ import annotations

import torch

from visprompt.data.features import FeatureBatch
from visprompt.methods.base import PromptMethod, cosine_logits
from visprompt.methods.zeroshot import register_zero_shot_anchor


class FeatureMethod(PromptMethod):
    """A head on the frozen image features, anchored to the zero-shot classifier ``zs_text``."""

    def __init__(self, backbone, classnames, config, templates=()):
        super().__init__(backbone, classnames, config, templates)
        register_zero_shot_anchor(self, backbone, self.classnames, templates)

    def zero_shot_logits(self, image: torch.Tensor) -> torch.Tensor:
        return cosine_logits(image, self.zs_text, self.logit_scale)

    def classifier(self) -> torch.Tensor:
        """(K, D) text-side weights of the head (normalised in the logits)."""
        return self.zs_text

    def class_text_features(self) -> torch.Tensor:
        return self.classifier()

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        weights = self.classifier() if text_features is None else text_features
        return cosine_logits(features.image, weights, self.logit_scale)
