"""The ``multimodal-ner`` pipeline on ONNX Runtime against the same pipeline on eager PyTorch, in one run.

Both pipelines read the same posts the whole way (reading the post, processor, model, CRF marginals, entity
grouping); only the model differs: the PyTorch checkpoint, or its export by ``modeling_muse.export_onnx`` wrapped in
`ORTMuSEModel` (float32, CPU execution provider with ``--threads`` intra-op threads; CUDA's provider first on
``--device cuda`` when onnxruntime has it). The model is pipeline_speed.py's: a 4-layer BERT of width 256, a
ResNet-18, 224x224 images, n = 64 text positions and 2 CrossTransformer layers, randomly initialised; posts are 12-30
words with 400x300 in-memory images.

    python bench/onnx_pipeline_speed.py [--posts 64] [--repeats 3] [--threads 1] [--device cuda]

Each measurement is the best of ``--repeats`` runs, the two pipelines interleaved (the machine is shared). The run
first checks that both pipelines give the same entities (scores within 1e-4) and prints the largest score
difference; it ends with ``ONNX Runtime pipeline / eager pipeline at batch 16: X.XXx``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_speed import (
    BATCH_SIZES, benchmark_checkpoints, best_time, pipeline_benchmark_parser, quiet_benchmark_process,
)
from transformers import pipeline

from modeling_muse import ORTMuSEModel
from modeling_muse.export_onnx import export_onnx

TOLERANCE = 1e-4


def largest_score_difference(left: list[list[dict]], right: list[list[dict]]) -> float:
    """The largest difference of two pipelines' entity scores; an error if the entities differ otherwise."""
    def without_scores(entities: list[dict]) -> list[dict]:
        return [{key: value for key, value in entity.items() if key != "score"} for entity in entities]

    largest = 0.0
    for post, (ours, theirs) in enumerate(zip(left, right, strict=True)):
        if without_scores(ours) != without_scores(theirs):
            raise RuntimeError(f"post {post}: the ONNX Runtime pipeline's entities differ from eager's")
        largest = max([largest, *(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))])
    return largest


def main() -> None:
    parser = pipeline_benchmark_parser(
        __doc__.split("\n\n")[0], repeats=3, threads_help="torch and ONNX Runtime intra-op threads"
    )
    parser.add_argument("--device", default="cpu", help="torch device of the eager pipeline (default cpu)")
    args = parser.parse_args()
    import onnxruntime

    quiet_benchmark_process(args.threads)
    with benchmark_checkpoints(args.posts) as (posts, muse_folder, _):
        eager = pipeline("multimodal-ner", model=muse_folder, device=args.device)
        onnx_folder = Path(muse_folder) / "onnx"
        export_onnx(muse_folder, onnx_folder)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        providers = ["CPUExecutionProvider"]
        if args.device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        model = ORTMuSEModel.from_pretrained(onnx_folder, providers=providers, session_options=options)
        on_onnx_runtime = pipeline("multimodal-ner", model=model, processor=str(onnx_folder), device=args.device)

    variants = {"eager": eager, "ONNX Runtime": on_onnx_runtime}
    difference = largest_score_difference(on_onnx_runtime(posts, batch_size=16), eager(posts, batch_size=16))
    if difference > TOLERANCE:
        raise RuntimeError(f"the ONNX Runtime pipeline's scores differ from eager's by {difference:.3g}")
    for batch_size in BATCH_SIZES:  # warm-up
        for pipe in variants.values():
            pipe(posts, batch_size=batch_size)
    rates = {}
    for batch_size in BATCH_SIZES:
        for _ in range(args.repeats):
            for name, pipe in variants.items():
                seconds = best_time(lambda pipe=pipe, size=batch_size: pipe(posts, batch_size=size), 1, args.device)
                rates[name, batch_size] = max(rates.get((name, batch_size), 0.0), args.posts / seconds)

    print(f"multimodal-ner pipeline, eager PyTorch ({args.device}) against ONNX Runtime ({providers[0]}), "
          f"{args.threads} intra-op thread(s), {args.posts} posts, best of {args.repeats}")
    print(f"same entities; largest score difference {difference:.2g}")
    print(f"{'batch':>5} | {'eager posts/s':>13} | {'ONNX Runtime posts/s':>20} | {'speed-up':>8}")
    for batch_size in BATCH_SIZES:
        eager_rate, onnx_rate = rates["eager", batch_size], rates["ONNX Runtime", batch_size]
        print(f"{batch_size:>5} | {eager_rate:>13.2f} | {onnx_rate:>20.2f} | {onnx_rate / eager_rate:>7.2f}x")
    batch = BATCH_SIZES[-1]
    print(f"ONNX Runtime pipeline / eager pipeline at batch {batch}: "
          f"{rates['ONNX Runtime', batch] / rates['eager', batch]:.2f}x")


if __name__ == "__main__":
    main()
