"""MuSE (Zhu et al., "Exchanging-based Multimodal Fusion with Transformer") as a `transformers` model.

Importing this package registers MuSE with the Auto classes, so that `AutoConfig`, `AutoModel`,
`AutoModelForTokenClassification`, `AutoModelForSequenceClassification` and `AutoProcessor` load MuSE
checkpoints.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from configuration_muse import MuSEConfig
from processing_muse import MuSEProcessor

from .modeling import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel, MuSEPreTrainedModel
from .outputs import MuSEModelOutput, MuSESequenceClassifierOutput, MuSETokenClassifierOutput

AutoConfig.register(MuSEConfig.model_type, MuSEConfig, exist_ok=True)
AutoModel.register(MuSEConfig, MuSEModel, exist_ok=True)
AutoModelForTokenClassification.register(MuSEConfig, MuSEForTokenClassification, exist_ok=True)
AutoModelForSequenceClassification.register(MuSEConfig, MuSEForSequenceClassification, exist_ok=True)
AutoProcessor.register(MuSEConfig, MuSEProcessor, exist_ok=True)

__all__ = [
    "MuSEConfig",
    "MuSEForSequenceClassification",
    "MuSEForTokenClassification",
    "MuSEModel",
    "MuSEModelOutput",
    "MuSEPreTrainedModel",
    "MuSEProcessor",
    "MuSESequenceClassifierOutput",
    "MuSETokenClassifierOutput",
    "MultimodalNERPipeline",
    "MultimodalSentimentPipeline",
]

from .pipelines import MultimodalNERPipeline, MultimodalSentimentPipeline  # noqa: E402  registers the pipeline tasks
