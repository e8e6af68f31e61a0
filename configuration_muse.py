"""`MuSEConfig` and the Table 3 ablation variants, importable as ``configuration_muse``.

The implementation lives in `modeling_muse/configuration_muse.py`: a checkpoint carries its code for
``trust_remote_code=True``, and transformers copies a class's file together with the files it imports
*relatively* from the same folder, so the configuration, the processor and the models share one folder.
This module keeps the documented import path; its names are the package's own objects.
"""

from modeling_muse.configuration_muse import ABLATION_VARIANTS, MuSEConfig

__all__ = ["ABLATION_VARIANTS", "MuSEConfig"]
