"""PTNL (Wu et al., ICCV 2023): CoOp trained with generalised cross-entropy.

"Why Is Prompt Tuning for Vision-Language Models Robust to Noisy Labels?"
shows that a shared learnable context is already fairly robust to label noise
and that the robust loss GCE makes it more so. The method is the ``gce``
method (:mod:`visprompt.methods.gce`: one context shared by all classes and
images, one text pass of K prompts per step, ``GCE_q = (1 - p_y^q) / q`` on the
given labels) registered with PTNL's settings; it is one concept with two
names because the papers report it under both.

Reference defaults: 16 context tokens, N(0, 0.02) initialisation, SGD lr 0.002,
batch 32, 50 epochs, RN50, q = 0.5, on the class-balanced noise protocol
(``noise.protocol: balanced``, :mod:`visprompt.data.protocols`), which is
applied by default for this method; set ``noise.protocol=relabel`` to compare
it on the NLPrompt/VisPrompt protocol instead. ``loss: ce`` gives the paper's
CoOp-with-CE rows under the same protocol.

Differences from the reference: GCE's p_y^q is evaluated as exp(q log p_y)
(finite gradients when p_y underflows; :func:`visprompt.robust.gce_loss`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from visprompt.method_spec import register_method
from visprompt.methods.gce import GCE, GCEConfig


class PTNLConfig(GCEConfig):
    """PTNL's options: those of ``gce`` with PTNL's q."""

    name: Literal["ptnl"] = "ptnl"
    q: float = Field(0.5, gt=0.0, le=1.0, description="GCE exponent q (1 = MAE)")


#: PTNL is the GCE method under PTNL's defaults (see the module docstring).
PTNL = register_method(
    "ptnl",
    config=PTNLConfig,
    defaults={"optim.epochs": 50, "optim.batch_size": 32, "optim.lr": 0.002},
    noise_protocol="balanced",
    # released script: CE (GCE only behind --use-robustloss); PREC fp16
    reference={"method.loss": "ce", "precision": "fp16"},
    text_cost="K",
    description="PTNL: CoOp with generalised cross-entropy (q 0.5), balanced noise protocol",
)(GCE)
