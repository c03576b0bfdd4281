"""Methods behind a registry: every module in this folder registers itself on import.

The registry and what a method declares live in :mod:`visprompt.method_spec`
(a leaf module, so that the config layer can read them without importing any
method); this package re-exports them for method files and users.
"""

import importlib
import pkgutil

from visprompt.method_spec import (
    METHOD_REGISTRY,
    MethodConfig,
    MethodEntry,
    Requirements,
    register_method,
)
from visprompt.methods.base import (
    EpochContext,
    EpochPlan,
    FeatureBatch,
    PromptMethod,
    StepOutput,
    TrainBatch,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "prompt_learner"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHOD_REGISTRY",
    "EpochContext",
    "EpochPlan",
    "FeatureBatch",
    "MethodConfig",
    "MethodEntry",
    "Requirements",
    "PromptMethod",
    "StepOutput",
    "TrainBatch",
    "register_method",
]
