"""The data layer's argument checks: one helper per concept, used by the public functions.

A run's settings are validated once, at the edge (:mod:`visprompt.config`).
The library functions a user may call without a config - the few-shot
samplers, label-noise injection, the balanced protocol, the dataset readers -
check their own arguments once, through these helpers, so that every entry
point refuses a bad value with the same one-line message. Internal helpers
trust their inputs and check nothing. (The noise types and rates have their
home in :mod:`visprompt.data.noise`, next to the list of types.)
"""

from __future__ import annotations

import numpy as np

from visprompt.errors import VispromptError


def _is_whole(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_seed(seed: object) -> int:
    """``seed`` as an ``int``; a :class:`VispromptError` unless it is a whole number >= 0."""
    if not _is_whole(seed) or seed < 0:  # type: ignore[operator]
        raise VispromptError(f"seed {seed!r} is not a whole number >= 0; set seed to e.g. 1")
    return int(seed)  # type: ignore[call-overload]


def check_shots(shots: object, key: str = "data.shots", minimum: int = 1) -> int:
    """``shots`` (images per class) as an ``int``; an error unless a whole number >= ``minimum``.

    ``key`` names the setting in the message (``data.shots``, ``val shots``).
    """
    if not _is_whole(shots) or shots < minimum:  # type: ignore[operator]
        what = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise VispromptError(f"{key} is {shots!r}; set it to {what} of images per class")
    return int(shots)  # type: ignore[call-overload]
