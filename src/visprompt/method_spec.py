"""What a method declares about itself, as data: its options model, defaults and needs.

This is the seam between the config layer and the methods. ``visprompt.config``
reads a method's entry from :data:`METHOD_REGISTRY` here and checks its
:class:`Requirements` once, at the edge; it never imports a method module. The
methods import this module to register themselves (``@register_method``), and
the first lookup in the registry imports :mod:`visprompt.methods`, which
imports every method file (see :class:`visprompt.registry.Registry`).

Adding a method is one new file in ``visprompt/methods/`` (or any module the
user imports) with an options model derived from :class:`MethodConfig` and a
:class:`~visprompt.methods.base.PromptMethod` subclass decorated with
``@register_method``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from visprompt.options import Section
from visprompt.registry import Registry


@dataclass(frozen=True)
class Requirements:
    """What a method with given options needs from the run; checked by the config layer.

    Attributes:
        vit: ``(what needs it, how to do without)`` when the method needs a ViT
            image tower (e.g. ``("method.visual_tokens=patches", "use
            method.visual_tokens=pool")``), else None; both go into the error.
        patch_tokens: the features must carry pooled ViT patch tokens.
        per_image_prompts: prompts differ per image (B*K text sequences per
            step; evaluation cannot share class text features).
        min_epochs: ``(epochs, reason)`` when ``optim.epochs`` must be at least
            ``epochs``, else None.
        validation: what chooses on the validation split (e.g. ``"linear-probe's
            C search"``), else None; a run without val images is then refused
            before anything is written, and the method gets the split's features
            (:class:`visprompt.data.validation_split.ValidationSplit`).
    """

    vit: tuple[str, str] | None = None
    patch_tokens: bool = False
    per_image_prompts: bool = False
    min_epochs: tuple[int, str] | None = None
    validation: str | None = None

    def vit_error(self, backbone: str) -> str:
        """The one-line refusal of a ResNet ``backbone`` for a method that needs a ViT."""
        what, fix = self.vit or ("this method", "choose a ViT backbone")
        return f"{what} needs a ViT image tower, but {backbone!r} is a ResNet; {fix}"


class MethodConfig(Section):
    """Base of every method's options; subclasses add their own keys.

    ``requirements()`` derives the method's needs from its options (e.g.
    VisPrompt's ``visual_tokens: patches`` needs a ViT); validation inside the
    method's own options belongs in the subclass's pydantic validators.
    """

    name: str

    def requirements(self) -> Requirements:
        return Requirements()


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
        noise_protocol: the noise protocol of the method's paper (``relabel``
            or ``balanced``), used wherever ``noise.protocol`` is not set.
        text_cost: text-encoder sequences per training step (README's method table).
        description: one line for ``visprompt methods``.
    """

    name: str
    cls: type
    config_cls: type[MethodConfig]
    defaults: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    noise_protocol: Literal["relabel", "balanced"] = "relabel"
    text_cost: str = "K"
    description: str = ""


METHOD_REGISTRY: Registry[MethodEntry] = Registry("method", discover=("visprompt.methods",))


def register_method(
    name: str,
    config: type[MethodConfig],
    defaults: dict | None = None,
    reference: dict | None = None,
    noise_protocol: Literal["relabel", "balanced"] = "relabel",
    text_cost: str = "K",
    description: str = "",
) -> Callable[[type], type]:
    """Class decorator: register a PromptMethod subclass under ``name``.

    One class may be registered under several names with different options
    models and defaults (a preset of the same math, e.g. ``ptnl`` of ``gce``).
    """

    def decorate(cls: type) -> type:
        entry = MethodEntry(
            name=name,
            cls=cls,
            config_cls=config,
            defaults=dict(defaults or {}),
            reference=dict(reference or {}),
            noise_protocol=noise_protocol,
            text_cost=text_cost,
            description=description or (cls.__doc__ or "").strip().splitlines()[0],
        )
        METHOD_REGISTRY.register(name)(entry)
        return cls

    return decorate
