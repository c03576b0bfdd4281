"""Zero-shot CLIP: class text features from hand-written templates, no training.

Each class's classifier is the normalised mean of the normalised text features
of its templates (CoOp's per-dataset template; several are averaged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from visprompt.backbone import clean_classname
from visprompt.method_spec import MethodConfig, register_method
from visprompt.methods.base import FeatureBatch, PromptMethod, cosine_logits


class ZeroShotConfig(MethodConfig):
    name: Literal["zeroshot"] = "zeroshot"
    #: templates to use instead of the dataset's own (``{}`` = class name)
    templates: list[str] | None = None


@torch.no_grad()
def zero_shot_weights(
    backbone, classnames: Sequence[str], templates: Sequence[str] = ()
) -> torch.Tensor:
    """(K, D) zero-shot classifier: per class, the normalised mean of its templates'
    normalised text features (CLIP's and Tip-Adapter's ensembling; one template: its
    feature). ``templates`` default to ``"a photo of a {}."``.

    The one home of the hand-written-prompt classifier: zero-shot evaluates with it,
    and the baselines that anchor to it (TaskRes, CLAP, KgCoOp, ProGrad) start from it.
    """
    used = tuple(templates or ("a photo of a {}.",))
    feats = []
    for name in classnames:
        texts = [t.format(clean_classname(name)) for t in used]
        feats.append(F.normalize(backbone.encode_text(texts).mean(0), dim=-1))
    return torch.stack(feats).float()


def register_zero_shot_anchor(
    module: torch.nn.Module, backbone, classnames: Sequence[str], templates: Sequence[str] = ()
) -> None:
    """Give ``module`` the (K, D) buffer ``zs_text``: the zero-shot classifier it anchors to.

    Not persistent: it is rebuilt from the frozen backbone whenever the method is
    built, so a checkpoint holds only what trains.
    """
    weights = zero_shot_weights(backbone, classnames, templates)
    module.register_buffer("zs_text", weights, persistent=False)


@register_method(
    "zeroshot",
    config=ZeroShotConfig,
    text_cost="0 (K once)",
    description="zero-shot CLIP with the dataset's hand-written templates",
)
class ZeroShot(PromptMethod):
    """Zero-shot CLIP with hand-written templates; nothing trains."""

    trainable = False

    def __init__(self, backbone, classnames, config: ZeroShotConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        text = zero_shot_weights(backbone, self.classnames, config.templates or templates)
        self.register_buffer("text", text, persistent=False)

    def class_text_features(self) -> torch.Tensor:
        return self.text

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return cosine_logits(features.image, self.text, self.logit_scale)
