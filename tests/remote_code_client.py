"""Load MuSE checkpoints where this project cannot be imported, as a user without it would (tests/test_remote_code.py).

Run as ``python -I remote_code_client.py <ner folder> <sentiment folder> <image> <output.json>``. Every module of the
project is blocked before anything else is imported, so only the code saved in the folders can serve. Writes what
each Auto class and pipeline did without ``trust_remote_code`` (the error) and with it (the outputs).
"""

import importlib.abc
import json
import sys

PROJECT_MODULES = {"modeling_muse", "configuration_muse", "processing_muse", "datasets_scripts", "muse_training"}


class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this process plays a machine without MuSE)")
        return None


sys.meta_path.insert(0, BlockProject())

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
    pipeline,
)

ner_folder, sentiment_folder, image_path, output_path = sys.argv[1:]
torch.set_num_threads(1)  # as in the test process, so that reductions run in the same order
report = {"project_importable": True, "refused": {}, "loaded": {}}
try:
    import modeling_muse  # noqa: F401
except ModuleNotFoundError:
    report["project_importable"] = False

AUTO_CLASSES = (AutoConfig, AutoModel, AutoModelForTokenClassification, AutoModelForSequenceClassification, AutoProcessor)
for auto_class in AUTO_CLASSES:
    try:
        loaded = auto_class.from_pretrained(ner_folder)
        report["refused"][auto_class.__name__] = f"loaded {type(loaded).__name__} without trust_remote_code"
    except ValueError as error:
        report["refused"][auto_class.__name__] = str(error)
for task, folder in (("multimodal-ner", ner_folder), ("multimodal-sentiment", sentiment_folder)):
    try:
        pipeline(task, model=folder)
        report["refused"][task] = "built without trust_remote_code"
    except ValueError as error:
        report["refused"][task] = str(error)

for auto_class in AUTO_CLASSES:
    report["loaded"][auto_class.__name__] = type(auto_class.from_pretrained(ner_folder, trust_remote_code=True)).__name__

processor = AutoProcessor.from_pretrained(ner_folder, trust_remote_code=True)
image = Image.open(image_path)
inputs = processor(images=[image], text=[["Lionel", "Messi", "visits", "Paris"]], return_tensors="pt")
with torch.no_grad():
    tagger = AutoModelForTokenClassification.from_pretrained(ner_folder, trust_remote_code=True).eval()
    tagged = tagger(**inputs)
    base = AutoModel.from_pretrained(ner_folder, trust_remote_code=True).eval()
    fusion = base(**{name: value for name, value in inputs.items() if name != "word_start_mask"}).fusion_embeddings
report["ner_logits"] = tagged.logits.tolist()
report["ner_tags"] = tagged.predicted_tag_ids.tolist()
report["fusion_embeddings"] = fusion.tolist()

post = {"text": "Lionel Messi visits Paris", "image": image_path}
ner = pipeline("multimodal-ner", model=ner_folder, trust_remote_code=True)
sentiment = pipeline("multimodal-sentiment", model=sentiment_folder, trust_remote_code=True)
report["ner_pipeline"] = ner(post, aggregation_strategy="none")
report["ner_pipeline_exchange"] = ner(post, return_exchange=True)["exchange"]["layers"]
report["sentiment_pipeline"] = sentiment([post, post], top_k=None)
report["pipeline_classes"] = [type(ner).__module__, type(sentiment).__module__]

with open(output_path, "w") as handle:
    json.dump(report, handle)
