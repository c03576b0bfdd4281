"""Noise-robust building blocks shared by the methods.

Modules, one job each:

- :mod:`~visprompt.robust.losses` - CE, GCE, MAE, soft CE, entropy terms;
- :mod:`~visprompt.robust.split` - :class:`Split`, the one result of every
  purifier, and the loss-group encoding ``CLEAN``/``NOISY``;
- :mod:`~visprompt.robust.quality` - a split's quality against the truth and the
  ``purify_*`` numbers logged each epoch;
- :mod:`~visprompt.robust.purifier` - the purifier contract and the
  ``PURIFIERS`` registry, filled by :mod:`~visprompt.robust.purifiers` (``ot``,
  ``gmm``, ``none``: one file each);
- :mod:`~visprompt.robust.ot_purify` - NLPrompt's OT purification;
  :mod:`~visprompt.robust.sinkhorn` - its entropic OT solver;
  :mod:`~visprompt.robust.gmm` - the two-Gaussian mixture of JoAPR's rule.

Names are imported on first use (PEP 562), so that a torch-free caller - the
results store reading :data:`~visprompt.robust.quality.PURIFY_COLUMNS` - does
not load torch by importing this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "confidence_penalty": "losses",
    "cross_entropy": "losses",
    "entropy": "losses",
    "gce_loss": "losses",
    "mae_loss": "losses",
    "soft_cross_entropy": "losses",
    "check_labels": "losses",
    "CLEAN": "split",
    "NOISY": "split",
    "Split": "split",
    "PURIFY_COLUMNS": "quality",
    "purify_metrics": "quality",
    "split_quality": "quality",
    "PURIFIERS": "purifier",
    "Purifier": "purifier",
    "PurifierChoice": "purifier",
    "build_purifier": "purifier",
    "purifier_for": "purifier",
    "register_purifier": "purifier",
    "PurifyResult": "ot_purify",
    "budget_at": "ot_purify",
    "purify": "ot_purify",
    "SinkhornResult": "sinkhorn",
    "sinkhorn_log": "sinkhorn",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
