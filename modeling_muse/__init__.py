"""MuSE (Zhu et al., "Exchanging-based Multimodal Fusion with Transformer") as a `transformers` model.

Importing this package registers MuSE with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForTokenClassification`, `AutoModelForSequenceClassification`, `AutoProcessor`) and the pipeline tasks
``multimodal-ner`` and ``multimodal-sentiment``, so that MuSE checkpoints load with this installed code.

Every file of the package imports the others relatively and nothing outside it, so that `save_pretrained` can copy
the code beside the weights: the classes are also registered for their Auto classes (``auto_map``), which lets a
checkpoint load with ``trust_remote_code=True`` where this package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_muse import ABLATION_VARIANTS, MuSEConfig
from .modeling import (
    AUTO_MODEL_CLASSES,
    MuSEForSequenceClassification,
    MuSEForTokenClassification,
    MuSEModel,
    MuSEPreTrainedModel,
)
from .onnx_runtime import ORTMuSEForSequenceClassification, ORTMuSEForTokenClassification, ORTMuSEModel
from .outputs import MuSEModelOutput, MuSESequenceClassifierOutput, MuSETokenClassifierOutput
from .pipelines import MultimodalNERPipeline, MultimodalSentimentPipeline
from .processing_muse import MuSEProcessor

# Task name -> (pipeline class, the Auto class of its model). Registered here, where the package is imported, so that
# the model code does not depend on its pipelines; a saved model lists the registered tasks as `custom_pipelines`
# and carries their code (`MuSEPreTrainedModel.save_pretrained`), so a checkpoint also serves them without this
# package.
PIPELINE_TASKS = {
    "multimodal-ner": (MultimodalNERPipeline, AutoModelForTokenClassification),
    "multimodal-sentiment": (MultimodalSentimentPipeline, AutoModelForSequenceClassification),
}

AutoConfig.register(MuSEConfig.model_type, MuSEConfig, exist_ok=True)
AutoProcessor.register(MuSEConfig, MuSEProcessor, exist_ok=True)
MuSEConfig.register_for_auto_class()
MuSEProcessor.register_for_auto_class()
for _auto_class, _model_class in AUTO_MODEL_CLASSES.items():
    _auto_class.register(MuSEConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_class.__name__)
# transformers tells a bare model (hidden states, no head, no loss) from a task model by its Auto name table, as its
# Trainer and its common model tests do; MuSEModel is MuSE's bare model.
MODEL_MAPPING_NAMES.setdefault(MuSEConfig.model_type, MuSEModel.__name__)
for _task, (_pipeline_class, _auto_model_class) in PIPELINE_TASKS.items():
    PIPELINE_REGISTRY.register_pipeline(_task, pipeline_class=_pipeline_class, pt_model=_auto_model_class, type="multimodal")

__all__ = [
    "ABLATION_VARIANTS",
    "PIPELINE_TASKS",
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
    "ORTMuSEForSequenceClassification",
    "ORTMuSEForTokenClassification",
    "ORTMuSEModel",
]
