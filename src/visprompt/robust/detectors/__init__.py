"""The detectors behind :data:`visprompt.robust.detector.DETECTORS`: one module each.

Every module in this folder registers itself on import, so adding a detector is
one new file here (see :mod:`visprompt.robust.detector` for the contract).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
