"""Methods behind a registry: every module in this folder registers itself on import."""

import importlib
import pkgutil

from visprompt.methods.base import (
    EpochContext,
    EpochPlan,
    FeatureBatch,
    PromptMethod,
    StepOutput,
    TrainBatch,
)
from visprompt.methods.registry import METHOD_REGISTRY, MethodEntry, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry", "prompt_learner"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHOD_REGISTRY",
    "EpochContext",
    "EpochPlan",
    "FeatureBatch",
    "MethodEntry",
    "PromptMethod",
    "StepOutput",
    "TrainBatch",
    "register_method",
]
