"""Peak memory of one MuSE training step at the paper's size, with and without gradient checkpointing (issue 21).

The model of ``training_step.py``: a BERT-base-sized random text encoder, ResNet-152 on 224x224 images, the 6-layer
CrossTransformer and both regularizer decoders (caption LSTM 512, PixelCNN++ 80 x 5), the NER head; the training
scripts' AdamW. One step is forward, backward and the optimizer step. Every measurement runs in a fresh process, so
that nothing of an earlier one (allocator caches, the peak counters) is counted:

- CUDA: ``torch.cuda.max_memory_allocated`` over the step, the counter reset once the model and the optimizer state
  are on the device.
- CPU: the process's peak resident size (``VmHWM``), reset (``/proc/self/clear_refs``) once the model and the
  optimizer state are built, with freed memory given back to the system first (``malloc_trim``), so that the peak
  is that of the step and not of building the model. Where the reset is not allowed the lifetime peak
  (``ru_maxrss``) is read instead, which the table says.

The optimizer state (AdamW's two moments) is created before the measurement, so that "model + optimizer" is what a
training process holds between steps and "step" is what one step adds on top: gradients, the activations kept for
the backward pass, and temporaries. Gradient checkpointing shrinks the activations only; the table gives both the
whole peak and the step's part, and the floor no activation saving can go below: model, optimizer state and one
gradient per trainable parameter, all held at the optimizer step.

``--budget_gb G`` also searches, with and without checkpointing, the largest batch whose whole peak (tensors; on a CPU without the runtime, see below) fits in G GiB
(doubling from ``--batch``, then bisecting to within an eighth; each probe is a fresh process, and a probe that runs out of memory does
not fit). On a CPU the budget may not exceed 80 % of the memory available, so that no probe can exhaust the machine.

    python bench/memory.py [--batch 8] [--device cuda] [--dtype bfloat16] [--budget_gb 80] [--task ner|msa]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

_GIB = 1024**3
# Last line of a measuring process's output.
_RESULT_PREFIX = "MEMORY_RESULT "
_LARGEST_PROBE = 4096
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_MAPPED_ABOVE = 128 * 1024
# --size small: the same model with small towers, to try the script in seconds.
SIZES = ("paper", "small")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak resident size of this process (Linux 4.0+); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _map_large_allocations_alone() -> bool:
    """Make glibc serve every allocation above 128 KiB by its own mapping, unmapped when freed (a fixed
    ``M_MMAP_THRESHOLD`` also stops glibc from raising it as tensors come and go). The resident size then follows the
    live tensors instead of the heap's high-water mark. False without glibc."""
    from muse_training.freed_memory import glibc

    libc = glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, _MAPPED_ABOVE))


def _give_back_freed_memory() -> None:
    gc.collect()
    from muse_training.freed_memory import glibc

    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def build_config(size: str, num_labels: int):
    """The paper-size MuSE of ``training_step.py`` (BERT-base-sized text encoder, ResNet-152, 6 CrossTransformer
    layers, both decoders), or its small stand-in."""
    from transformers import BertConfig

    from configuration_muse import MuSEConfig

    if size == "paper":
        return MuSEConfig(text_config=BertConfig(), vision_model_name_or_path="resnet152", num_labels=num_labels)
    text = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
    return MuSEConfig(
        text_config=text, vision_model_name_or_path="resnet18", num_labels=num_labels, num_attention_heads=4,
        num_cross_layers=2, exchange_start_layer=1, exchange_end_layer=2, caption_decoder_dim=64, pixelcnn_filters=16,
        pixelcnn_resnet_blocks=1,
    )  # fmt: skip


def measure(batch: int, checkpointing: bool, device: str, dtype: str, task: str, size: str = "paper") -> dict:
    """One training step in this process; its memory in bytes (see the module docstring)."""
    import torch

    from cost_tools import autocast, synchronize
    from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
    from muse_training.models import enable_gradient_checkpointing
    from muse_training.optimization import create_optimizer
    from training_step import TRAINING_OPTIMIZER, make_inputs

    on_cuda = torch.device(device).type == "cuda"
    # What the process holds before the model exists (Python, torch and the libraries): left out of the CPU numbers,
    # so that they count tensors as the CUDA ones do.
    _give_back_freed_memory()
    runtime = 0 if on_cuda else _rss_bytes()
    torch.manual_seed(0)
    if task == "ner":
        config = build_config(size, num_labels=9)
        model, head = MuSEForTokenClassification(config), "tagger"
    else:
        config = build_config(size, num_labels=3)
        model, head = MuSEForSequenceClassification(config), "classifier"
    model = model.to(device).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = create_optimizer(model, (head,), TRAINING_OPTIMIZER)
    inputs = make_inputs(batch, config.max_text_length, device)
    if task == "msa":
        inputs.pop("word_start_mask")
        inputs["labels"] = torch.randint(0, 3, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    # AdamW's moments exist from the first step on; created here (zero gradients) so that they count as held state.
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)

    if on_cuda:
        torch.cuda.empty_cache()
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        peak_reset = True
    else:
        _give_back_freed_memory()
        held = _rss_bytes()
        peak_reset = _reset_peak_rss()

    start = time.perf_counter()
    with autocast(device, dtype):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    seconds = time.perf_counter() - start

    peak = torch.cuda.max_memory_allocated(device) if on_cuda else _peak_rss_bytes()
    return {
        "batch": batch,
        "checkpointing": checkpointing,
        "runtime": runtime,
        "held": held - runtime,
        "peak": peak - runtime,
        "step": peak - held,
        "seconds": seconds,
        "text_length": int(inputs["input_ids"].shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        # Gradients take their parameters' dtype (float32, also under autocast).
        "gradients": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        "peak_reset": peak_reset,
        "threads": torch.get_num_threads(),
    }


def measure_in_subprocess(batch: int, checkpointing: bool, args: argparse.Namespace) -> dict | None:
    """``measure`` in a fresh Python process; None when the step ran out of memory (or the process was killed)."""
    command = [
        sys.executable, __file__, "--_measure", "--batch", str(batch), "--device", args.device, "--dtype", args.dtype,
        "--task", args.task, "--size", args.size,
    ]  # fmt: skip
    if checkpointing:
        command.append("--_checkpointing")
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            result = json.loads(line.removeprefix(_RESULT_PREFIX))
            return None if result.get("out_of_memory") else result
    if completed.returncode in (-9, 137):  # killed, which on a CPU means the kernel's out-of-memory killer
        return None
    raise RuntimeError(
        f"the measuring process failed (exit {completed.returncode}): {' '.join(command)}\n{completed.stderr[-4000:]}"
    )


def largest_batch(checkpointing: bool, budget: float, args: argparse.Namespace, known: dict | None) -> tuple[int, list]:
    """The largest batch whose whole peak is at most ``budget`` bytes, and the probes as (batch, peak or None)."""
    probes: list[tuple[int, int | None]] = []

    def fits(batch: int) -> bool:
        result = known if known is not None and batch == known["batch"] else measure_in_subprocess(batch, checkpointing, args)
        probes.append((batch, None if result is None else result["peak"]))
        return result is not None and result["peak"] <= budget

    # Doubling from --batch (bisecting below it when even that does not fit), then bisecting.
    low, high = 0, args.batch
    while high <= _LARGEST_PROBE and fits(high):
        low, high = high, high * 2
    # Bisect to within an eighth: each probe builds the paper-size model afresh.
    while high - low > max(1, low // 8):
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, probes


def _gib(value: int | float) -> str:
    return f"{value / _GIB:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="batch of the with/without comparison (default: 8)")
    parser.add_argument("--budget_gb", type=float, default=None, help="search the largest batch that fits (GiB)")
    parser.add_argument("--task", choices=["ner", "msa"], default="ner", help="NER (CRF) or sentiment head")
    parser.add_argument(
        "--size", choices=SIZES, default="paper", help="paper: the paper's model; small: small towers, to try it quickly"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"],
        help="bfloat16 runs the forward pass and losses under torch.autocast; weights and optimizer stay float32",
    )  # fmt: skip
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}.")

    if args._measure:
        mapped_alone = not args.device.startswith("cuda") and _map_large_allocations_alone()
        import torch

        try:
            result = measure(args.batch, args._checkpointing, args.device, args.dtype, args.task, args.size)
            result["mapped_alone"] = mapped_alone
        except torch.OutOfMemoryError:
            result = {"out_of_memory": True}
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return

    on_cpu = not args.device.startswith("cuda")
    if args.budget_gb is not None:
        if args.budget_gb <= 0:
            parser.error(f"--budget_gb must be positive, got {args.budget_gb}.")
        available = _available_memory_bytes() if on_cpu else None
        if available is not None and args.budget_gb * _GIB > 0.8 * available:
            parser.error(
                f"--budget_gb {args.budget_gb} is more than 80 % of this machine's available memory "
                f"({available / _GIB:.1f} GiB): a probe could exhaust it. Give a smaller budget."
            )

    results = {}
    for checkpointing in (False, True):
        result = measure_in_subprocess(args.batch, checkpointing, args)
        if result is None:
            sys.exit(f"batch {args.batch} ran out of memory {'with' if checkpointing else 'without'} checkpointing.")
        results[checkpointing] = result
    plain, checkpointed = results[False], results[True]

    searched = {}
    if args.budget_gb is not None:
        for checkpointing in (False, True):
            searched[checkpointing] = largest_batch(checkpointing, args.budget_gb * _GIB, args, results[checkpointing])

    model_description = (
        "paper size: BERT-base-sized text encoder, ResNet-152 at 224x224, 6-layer CrossTransformer, caption LSTM 512, "
        "PixelCNN++ 80x5" if args.size == "paper" else "small size (2-layer BERT 128, ResNet-18 at 224x224)"
    )  # fmt: skip
    counter = "torch.cuda.max_memory_allocated" if not on_cpu else (
        "peak resident size (VmHWM, reset after building)" if plain["peak_reset"] else "lifetime peak RSS (ru_maxrss)"
    ) + ("; glibc maps allocations > 128 KiB alone" if plain.get("mapped_alone") else "")  # fmt: skip
    print(
        f"MuSE training step memory (forward, backward, AdamW step), {args.task}, {model_description} "
        f"({plain['parameters'] / 1e6:.0f} M parameters); batch {args.batch}, text padded to {plain['text_length']}; "
        f"{args.device} {args.dtype}, {plain['threads']} threads; each measurement in a fresh process; {counter}"
    )
    if on_cpu:
        print(
            f"(CPU: resident memory minus the {_gib(plain['runtime'])} GiB the process held before building the model: "
            f"Python, torch and the libraries)"
        )
    print(f"{'':<34}{'without':>10}{'with':>10}{'with / without':>16}")
    rows = [
        ("peak of the step (GiB)", plain["peak"], checkpointed["peak"]),
        ("  model + optimizer state (GiB)", plain["held"], checkpointed["held"]),
        ("  step: grads + activations (GiB)", plain["step"], checkpointed["step"]),
        ("    of which gradients (GiB)", plain["gradients"], checkpointed["gradients"]),
    ]
    for label, without, with_ in rows:
        print(f"{label:<34}{_gib(without):>10}{_gib(with_):>10}{with_ / without:>16.2f}")
    print(
        f"{'step time (s)':<34}{plain['seconds']:>10.1f}{checkpointed['seconds']:>10.1f}"
        f"{checkpointed['seconds'] / plain['seconds']:>16.2f}"
    )
    if searched:
        without_batch, without_probes = searched[False]
        with_batch, with_probes = searched[True]
        ratio = f"{with_batch / without_batch:>16.2f}" if without_batch else f"{'-':>16}"
        print(f"{f'largest batch in {args.budget_gb:g} GiB (1/8)':<34}{without_batch:>10}{with_batch:>10}{ratio}")
        for name, probes in (("without", without_probes), ("with", with_probes)):
            shown = ", ".join(f"{batch}: {'out of memory' if peak is None else _gib(peak)}" for batch, peak in probes)
            print(f"  probes {name} checkpointing (batch: peak GiB): {shown}")
    floor = plain["held"] + plain["gradients"]
    print(
        f"lowest possible peak, keeping no activation (model + optimizer state + gradients): {_gib(floor)} GiB, "
        f"{floor / plain['peak']:.2f} of the plain peak"
    )
    print(
        f"checkpointing peak / plain peak at batch {args.batch}: {checkpointed['peak'] / plain['peak']:.2f} "
        f"(goal <= 0.6); the step's own part: {checkpointed['step'] / plain['step']:.2f}"
    )


if __name__ == "__main__":
    # The bench folder (cost_tools, training_step) and the repository root (configuration_muse, when not installed).
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    main()
