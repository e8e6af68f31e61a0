"""Where a MuSE training step's time and FLOPs go, and what the two regularizer decoders cost (issue 13).

One model at the paper's sizes: a BERT-base-sized random text encoder, a ResNet-152 backbone on 224x224 images, a
6-layer CrossTransformer (exchange in layers 2-4, theta 0.1), the caption decoder (LSTM 512) and the PixelCNN++
(80 filters x 5 blocks, 10 mixtures). The batch's posts have random lengths between 16 and 64 sub-words and the
text is padded to the longest one, as MuSEProcessor does. As in the training scripts, glibc keeps freed memory for
reuse (muse_training/freed_memory.py).

Two variants of the same model and weights, stepped alternately in one process (forward, backward, and the training
scripts' AdamW from ``muse_training.optimization.create_optimizer``):

- full MuSE: L_task + alpha L_it + beta L_ti (paper eq. 14);
- only-L_task: the same model with its regularizers (noise MLPs and both decoders) detached, so that they neither
  run nor get optimizer updates (AdamW skips parameters without gradients), which is what the only-L_task
  ablation's model does.

Per component, ``--profiled_steps`` profiled steps of each variant give its share of the step's time (medians),
and one step under ``cost_tools.ComponentFlops`` its share of the FLOPs (see cost_tools.py for what is counted).
Forward time is the time inside the component's modules; backward time is charged to the component whose forward
created each autograd node (the profiler tags every backward node with its forward operator's sequence number);
gradient accumulation and the losses' glue are ``other``. The headline ratio comes from the unprofiled steps:
medians of ``--repeats`` steps per variant, variants interleaved so that changes in the machine's load hit both
alike. Last line: ``decoder overhead (full / only-L_task): X (FLOP ratio Y)``; the goal is X <= 1.15 * Y.

    python bench/training_step.py [--batch 4] [--repeats 5] [--profiled_steps 3] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections import defaultdict
from collections.abc import Iterator

# Kineto (the profiler's backend) otherwise logs a CUDA-less machine's failed GPU query as an ERROR line; read when
# torch loads. Its "USDT ... profiler_start/stop" lines on stderr do not follow this level.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from transformers import BertConfig

from configuration_muse import MuSEConfig
from cost_tools import (
    add_device_arguments,
    attribute_time,
    autocast,
    ComponentFlops,
    component_ranges,
    profiler_activities,
    spread,
    timed,
)
from modeling_muse import MuSEForTokenClassification
from muse_training.freed_memory import keep_freed_memory_in_process
from muse_training.optimization import create_optimizer

VARIANTS = ("full", "only-L_task")
# The training scripts' optimizer (muse_training.optimization), at the README's learning rates.
TRAINING_OPTIMIZER = argparse.Namespace(learning_rate=5e-5, head_learning_rate=1e-4, weight_decay=0.01)


def make_inputs(batch: int, n: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(n // 4, n + 1, (batch, 1), generator=generator)
    longest = int(lengths.max())
    attention_mask = (torch.arange(longest) < lengths).long()
    word_start_mask = attention_mask.clone()
    word_start_mask[:, 0] = 0
    inputs = {
        "input_ids": torch.randint(1000, 30000, (batch, longest), generator=generator) * attention_mask,
        "attention_mask": attention_mask,
        "word_start_mask": word_start_mask,
        "labels": torch.where(word_start_mask.bool(), torch.randint(0, 9, (batch, longest), generator=generator), -100),
        "pixel_values": torch.randn(batch, 3, 224, 224, generator=generator),
        "decoder_pixel_values": torch.randint(0, 256, (batch, 3, 32, 32), generator=generator) / 255 * 2 - 1,
    }
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def components_of(model: MuSEForTokenClassification) -> dict[str, list[torch.nn.Module]]:
    """The modules of each component, as called in the forward pass (the tagger's CRF and classifier are called
    one by one, not through the tagger)."""
    muse = model.muse
    regularizers = muse.regularizers
    return {
        "text encoder": [muse.text_encoder],
        "image backbone": [muse.image_encoder],
        "noise MLPs": [regularizers.image_projection, regularizers.text_projection],
        "CrossTransformer": [muse.cross_transformer],
        "caption decoder": [regularizers.caption_decoder],
        "PixelCNN++": [regularizers.generation_decoder],
        "fusion + head": [muse.fusion, model.tagger.dropout, model.tagger.classifier, model.tagger.crf],
    }


@contextlib.contextmanager
def variant(model: MuSEForTokenClassification, name: str) -> Iterator[None]:
    regularizers = model.muse.regularizers
    if name == "only-L_task":
        model.muse.regularizers = None
    try:
        yield
    finally:
        model.muse.regularizers = regularizers


def split_step(attributed: dict[str, dict[str, float]], step_seconds: float) -> dict[str, tuple[float, float]]:
    """{component: (forward s, backward s)}, with ``other`` = the step's time not inside any component, and
    ``step`` = (the step's time, 0)."""
    components = set(attributed["forward"]) | set(attributed["backward"])
    split = {name: (attributed["forward"].get(name, 0.0), attributed["backward"].get(name, 0.0)) for name in components}
    inside = sum(forward + backward for name, (forward, backward) in split.items() if name != "other")
    split["other"] = (step_seconds - inside, 0.0)
    split["step"] = (step_seconds, 0.0)
    return defaultdict(lambda: (0.0, 0.0), split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per variant")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--profiled_steps", type=int, default=3, help="profiled steps per variant")
    add_device_arguments(parser)
    args = parser.parse_args()
    # As the training scripts do (muse_training.loop.create_accelerator), for every variant alike.
    kept_freed_memory = keep_freed_memory_in_process()

    torch.manual_seed(0)
    config = MuSEConfig(text_config=BertConfig(), vision_model_name_or_path="resnet152", num_labels=9)
    model = MuSEForTokenClassification(config).to(args.device).train()
    optimizer = create_optimizer(model, ("tagger",), TRAINING_OPTIMIZER)
    inputs = make_inputs(args.batch, config.max_text_length, args.device)
    components = components_of(model)

    def step() -> None:
        with autocast(args.device, args.dtype):
            loss = model(**inputs).loss
        loss.backward()
        with torch.profiler.record_function("component: optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    parameters, flops, component_flops = {}, {}, {}
    for name in VARIANTS:
        with variant(model, name):
            parameters[name] = sum(p.numel() for p in model.parameters())
            for _ in range(args.warmup):
                step()
            with ComponentFlops(components) as counter:
                step()
            flops[name], component_flops[name] = counter.total, dict(counter.flops)

    # Per-component seconds of each profiled step: {variant: [{component: (forward, backward)}]}.
    profiled = {name: [] for name in VARIANTS}
    for _ in range(args.profiled_steps):
        for name in VARIANTS:
            with variant(model, name), component_ranges(components):
                with torch.profiler.profile(activities=profiler_activities(args.device)) as profile:
                    seconds = timed(step, args.device)
            profiled[name].append(split_step(attribute_time(profile, args.device), seconds))

    timings = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            with variant(model, name):
                timings[name].append(timed(step, args.device))
    medians = {name: statistics.median(values) for name, values in timings.items()}

    print(
        f"MuSE training step (forward, backward, AdamW), batch {args.batch}, text padded to its longest post "
        f"({inputs['input_ids'].shape[1]}), 224x224 images, BERT-base-sized text encoder, ResNet-152, caption LSTM "
        f"512, PixelCNN++ 80x5; {args.device} {args.dtype}, {torch.get_num_threads()} threads; glibc keeps freed "
        f"memory: {'yes' if kept_freed_memory else 'no'}"
    )
    print(f"{'variant':<13}{'params (M)':>11}{'GFLOP':>9}   step s: median [min-max] of {args.repeats}")
    for name in VARIANTS:
        print(f"{name:<13}{parameters[name] / 1e6:>11.1f}{flops[name] / 1e9:>9.1f}   {spread(timings[name])}")
    print()
    print(f"per component, median of {args.profiled_steps} profiled steps of each variant (time: forward + backward, "
          f"the backward")
    print("charged to the component whose forward created each autograd node; FLOPs: forward + backward)")
    print(f"{'':<18}{'full':^47}|{'only-L_task':^25}")
    print(f"{'component':<18}{'fwd s':>7}{'bwd s':>7}{'time %':>8}{'GFLOP':>8}{'FLOP %':>8}{'GFLOP/s':>9}"
          f"{'|':>2}{'time %':>8}{'FLOP %':>8}{'GFLOP/s':>9}")
    for component in [*components, "optimizer", "other"]:
        row = f"{component:<18}"
        for name in VARIANTS:
            forward = statistics.median(steps[component][0] for steps in profiled[name])
            backward = statistics.median(steps[component][1] for steps in profiled[name])
            step_seconds = statistics.median(steps["step"][0] for steps in profiled[name])
            seconds = forward + backward
            count = component_flops[name].get(component, 0)
            rate = f"{count / seconds / 1e9:>9.1f}" if count and seconds > 0 else f"{'-':>9}"
            time_share, flop_share = f"{100 * seconds / step_seconds:>7.1f}%", f"{100 * count / flops[name]:>7.1f}%"
            if name == "full":
                row += f"{forward:>7.3f}{backward:>7.3f}{time_share}{count / 1e9:>8.1f}{flop_share}{rate}"
            else:
                row += f"{'|':>2}{time_share}{flop_share}{rate}"
        print(row)
    for name in VARIANTS:
        print(f"profiled step, {name}: {spread([steps['step'][0] for steps in profiled[name]])} s")
    print("(other: gradient accumulation into the parameters, losses and glue outside the components, and the")
    print(" profiler's own overhead; the optimizer's element-wise work counts 0 FLOPs)")
    time_ratio = medians["full"] / medians["only-L_task"]
    flop_ratio = flops["full"] / flops["only-L_task"]
    print(f"time ratio / FLOP ratio: {time_ratio / flop_ratio:.2f} (goal <= 1.15)")
    print(f"decoder overhead (full / only-L_task): {time_ratio:.2f} (FLOP ratio {flop_ratio:.2f})")


if __name__ == "__main__":
    main()
