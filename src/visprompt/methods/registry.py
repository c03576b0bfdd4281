"""The method registry, re-exported for method files: see :mod:`visprompt.method_spec`."""

from visprompt.method_spec import (
    METHOD_REGISTRY,
    MethodConfig,
    MethodEntry,
    Requirements,
    register_method,
)

__all__ = ["METHOD_REGISTRY", "MethodConfig", "MethodEntry", "Requirements", "register_method"]
