"""The method registry: one file per method registers itself with ``@register_method``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from visprompt.config import MethodConfig, RunConfig
from visprompt.registry import Registry


@dataclass(frozen=True)
class MethodEntry:
    """A registered method.

    Attributes:
        name: ``method.name`` in run configs.
        cls: the :class:`~visprompt.methods.base.PromptMethod` subclass.
        config_cls: pydantic model of the method's options (subclass of MethodConfig).
        defaults: dotted config keys -> values of the method's paper (e.g.
            ``{"optim.batch_size": 16}``), applied wherever the user set nothing.
        reference: dotted keys -> values where the method's *released code*
            differs from its paper, applied (before ``defaults``, wherever the
            user set nothing) by ``preset: reference``. The key ``precision``
            with a GPU-only value (fp16) applies only to runs on a GPU.
        text_cost: text-encoder sequences per training step (README's method table).
        description: one line for ``visprompt methods``.
        check: cross-section validation, e.g. ``visual_tokens: patches`` needs a
            ViT; raises VispromptError.
    """

    name: str
    cls: type
    config_cls: type[MethodConfig]
    defaults: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    text_cost: str = "K"
    description: str = ""
    check: Callable[[RunConfig], None] = lambda config: None


METHOD_REGISTRY: Registry[MethodEntry] = Registry("method")


def register_method(
    name: str,
    config: type[MethodConfig],
    defaults: dict | None = None,
    reference: dict | None = None,
    text_cost: str = "K",
    description: str = "",
    check: Callable[[RunConfig], None] | None = None,
) -> Callable[[type], type]:
    """Class decorator: register a PromptMethod subclass under ``name``."""

    def decorate(cls: type) -> type:
        entry = MethodEntry(
            name=name,
            cls=cls,
            config_cls=config,
            defaults=dict(defaults or {}),
            reference=dict(reference or {}),
            text_cost=text_cost,
            description=description or (cls.__doc__ or "").strip().splitlines()[0],
            check=check or (lambda config: None),
        )
        METHOD_REGISTRY.register(name)(entry)
        return cls

    return decorate
