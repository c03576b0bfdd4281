"""CoOp (Zhou et al., IJCV 2022): one learnable context shared by all images.

logits = logit_scale * cos(z, t_k), t_k = TextEncoder([SOS] ctx <name_k> . [EOS]),
trained with cross-entropy on the given labels. One text pass of K prompts per step.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visprompt.method_spec import MethodConfig, register_method
from visprompt.methods.base import FeatureBatch, PromptMethod, cosine_logits
from visprompt.methods.prompt_learner import ContextPrompts


class ContextConfig(MethodConfig):
    """Options of every method built on a learnable prompt context."""

    n_ctx: int = Field(16, ge=1, description="number of context tokens M")
    ctx_init: str | None = Field(None, description="phrase initialising the context")
    class_specific: bool = Field(False, description="one context per class (CSC)")
    class_token_position: Literal["end", "middle", "front"] = "end"
    init_std: float = Field(0.02, gt=0)


class CoOpConfig(ContextConfig):
    name: Literal["coop"] = "coop"


class ContextMethod(PromptMethod):
    """Base of methods whose prompts are ``ContextPrompts`` shared by all images."""

    def __init__(self, backbone, classnames, config: ContextConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        self.prompt = ContextPrompts(
            backbone,
            classnames,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            class_specific=config.class_specific,
            layout=config.class_token_position,
            init_std=config.init_std,
        )

    def class_text_features(self) -> torch.Tensor:
        return self.prompt.text_features()

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        text = self.prompt.text_features() if text_features is None else text_features
        return cosine_logits(features.image, text, self.logit_scale)


@register_method(
    "coop",
    config=CoOpConfig,
    defaults={"optim.epochs": 200, "optim.batch_size": 32, "optim.lr": 0.002},
    reference={"precision": "fp16"},  # CoOp configs: PREC fp16
    text_cost="K",
    description="CoOp: shared learnable context, cross-entropy",
)
class CoOp(ContextMethod):
    """CoOp: a shared learnable context trained with cross-entropy."""
