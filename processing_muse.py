"""`MuSEProcessor` and its image helpers, importable as ``processing_muse``.

The implementation lives in `modeling_muse/processing_muse.py`, beside the models, so that a saved checkpoint
can carry it for ``trust_remote_code=True`` (see `configuration_muse.py` at the repository root). The names
here are the package's own objects.
"""

from modeling_muse.processing_muse import *  # noqa: F403
from modeling_muse.processing_muse import __all__  # noqa: F401
