"""visprompt: robust prompt learning for frozen CLIP-style models under label noise."""

from visprompt.errors import VispromptError

__version__ = "0.1.0"

__all__ = ["VispromptError", "__version__"]
