"""visprompt: robust prompt learning for frozen CLIP-style models under label noise."""

import os

# Many small tensor operations run per step (prompt encoding, OT); when the cores
# are shared, OpenMP threads that spin while waiting slow them several-fold.
# Sleeping waits cost little on a dedicated machine. Only effective when set
# before torch is first imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from visprompt.errors import VispromptError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["VispromptError", "__version__"]
