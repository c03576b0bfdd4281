"""The purifier contract and the ``PURIFIERS`` registry.

A *purifier* decides before an epoch which given labels to trust: from the
current model's class probabilities of every training sample (N, K) and the
given labels it returns a :class:`~visprompt.robust.split.Split`. NLPrompt and
VisPrompt use ``ot`` (optimal transport), JoAPR uses ``gmm`` (a two-Gaussian
mixture over per-sample losses), and ``none`` trusts every label.

Adding one is one new file in ``visprompt/robust/purifiers/``::

    class MyOptions(Section):          # its options, with defaults
        my_threshold: float = 0.5

    @register_purifier("mine")
    class MyPurifier(Purifier):
        options_model = MyOptions
        def split(self, probs, labels, *, epoch, num_epochs, generator=None) -> Split: ...

A method asks for a purifier by name: its options model mixes in
:class:`PurifierChoice` (for ``method.purify``, narrowed to the names it
supports with a ``Literal``) and the purifiers' options models (so the keys sit
flat in ``method.*``); :func:`purifier_for` builds the chosen one from the
method's options, reading only the purifier's own keys.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, field_validator

from visprompt.errors import VispromptError
from visprompt.options import Section
from visprompt.registry import Registry
from visprompt.robust.split import Split


class NoOptions(Section):
    """The options model of a purifier that has none."""


class Purifier(ABC):
    """Base of every purifier (see the module docstring).

    Class attributes a purifier sets:
        name: its registry name (set by :func:`register_purifier`).
        options_model: the pydantic model of its options.
        judges_labels: False for a purifier that trusts every label without
            looking (``none``): the training loop then skips the prediction
            pass and logs no split, and ``label-issues`` falls back to the
            prediction-differs verdict.
        skip_undefined: leave a ratio of an empty side out of the logged
            metrics instead of logging NaN (see :func:`~visprompt.robust.quality.purify_metrics`).
        description: one line for ``label-issues`` and listings.
    """

    name: ClassVar[str] = ""
    options_model: ClassVar[type[Section]] = NoOptions
    judges_labels: ClassVar[bool] = True
    skip_undefined: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, options: Section | None = None) -> None:
        if options is None:
            options = self.options_model()
        if not isinstance(options, self.options_model):
            raise TypeError(
                f"purifier {self.name!r} takes {self.options_model.__name__}, "
                f"got {type(options).__name__}"
            )
        self.options = options

    @abstractmethod
    def split(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        *,
        epoch: int,
        num_epochs: int,
        generator: torch.Generator | None = None,
    ) -> Split:
        """Judge every sample's given label.

        Args:
            probs: (N, K) class probabilities of every training sample under the
                current model (rows sum to 1); ignored where ``judges_labels`` is False.
            labels: (N,) given (possibly noisy) labels.
            epoch: 0-based epoch about to be trained (schedules, e.g. OT's budget).
            num_epochs: the run's epoch count.
            generator: the epoch's generator, for any randomness (so a resumed
                run splits alike); None: a fixed seed.
        """

    def metrics(
        self, split: Split, labels: torch.Tensor, true_labels: torch.Tensor | None
    ) -> dict[str, float]:
        """The numbers logged with ``split`` each epoch (its stats and the ``purify_*`` keys)."""
        return split.metrics(labels, true_labels, skip_undefined=self.skip_undefined)

    # -- state that must survive a resume (the method keeps it in its extra_state) --
    def state_dict(self) -> dict[str, Any]:
        """JSON-able values or tensors; empty for a stateless purifier."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"purifier {self.name!r} keeps no state, got {sorted(state)}")


#: name -> purifier class; filled by the modules of :mod:`visprompt.robust.purifiers`.
PURIFIERS: Registry[type[Purifier]] = Registry("purifier", discover=("visprompt.robust.purifiers",))


def register_purifier(name: str) -> Callable[[type[Purifier]], type[Purifier]]:
    """Class decorator: register a :class:`Purifier` subclass under ``name``."""

    def decorate(cls: type[Purifier]) -> type[Purifier]:
        cls.name = name
        return PURIFIERS.register(name)(cls)

    return decorate


def purifier_options(cls: type[Purifier], source: BaseModel | None) -> Section:
    """``cls``'s options, read from the keys of ``source`` that its options model names.

    ``source`` is normally a method's options model that mixes the purifier's in;
    only the purifier's own keys are read, never the method's.
    """
    model = cls.options_model
    if source is None:
        return model()
    missing = [k for k in model.model_fields if not hasattr(source, k)]
    if missing:
        raise VispromptError(
            f"purifier {cls.name!r} needs the options {', '.join(missing)}, which "
            f"{type(source).__name__} does not have; mix {model.__name__} into it"
        )
    return model(**{k: getattr(source, k) for k in model.model_fields})


def build_purifier(name: str, source: BaseModel | None = None) -> Purifier:
    """A fresh purifier ``name`` with its options read from ``source`` (defaults if None)."""
    cls = PURIFIERS.get(name)
    return cls(purifier_options(cls, source))


class PurifierChoice(Section):
    """Mixin of a method's options: ``method.purify`` names the purifier of its epochs.

    A method states which purifiers it supports by narrowing the field in its
    options model, e.g. ``purify: Literal["ot", "none"] = "ot"``; config
    validation then refuses any other name in one line that lists the allowed
    ones, and :func:`supported_purifiers` reads them.
    """

    purify: str

    @field_validator("purify", mode="before")
    @classmethod
    def _supported(cls, value: Any) -> Any:
        allowed = supported_purifiers(cls)
        if value not in allowed:
            method = cls.model_fields["name"].default if "name" in cls.model_fields else None
            who = f"method {method}" if isinstance(method, str) else "this method"
            raise ValueError(
                f"{who} supports the purifier(s) {', '.join(allowed)}, got {value!r}; "
                f"set method.purify to one of them"
            )
        return value


def supported_purifiers(config_cls: type[PurifierChoice]) -> tuple[str, ...]:
    """The purifier names a method's options model allows for ``purify``."""
    annotation = config_cls.model_fields["purify"].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    return tuple(PURIFIERS.names())


def purifier_for(config: BaseModel) -> Purifier | None:
    """The purifier a method's options ask for, or None for a method without one."""
    if not isinstance(config, PurifierChoice):
        return None
    return build_purifier(config.purify, config)


@runtime_checkable
class HasPurifier(Protocol):
    """A method that keeps its (stateful) purifier between epochs exposes it here.

    ``label-issues`` then judges with that instance after the method's extra
    state (and with it the purifier's) is restored from the checkpoint.
    """

    purifier: Purifier


__all__ = [
    "PURIFIERS",
    "HasPurifier",
    "NoOptions",
    "Purifier",
    "PurifierChoice",
    "build_purifier",
    "purifier_for",
    "purifier_options",
    "register_purifier",
    "supported_purifiers",
]
