"""The pydantic base of every options model: config sections, method and purifier options.

A leaf module (it imports nothing of visprompt but errors), so that the config
layer, the methods and the purifiers can all build on it without importing
each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every options model: unknown keys are errors, values are checked on assignment."""

    # allow_inf_nan=False: `lr: nan` passes a `> 0` check (every comparison with NaN is
    # False) and then poisons the weights at the first step; no option is meant to be
    # non-finite, so NaN and infinity are refused everywhere at parse time.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )
