#!/usr/bin/env bash
# The GPU check: on a CUDA machine, the peak memory of a paper-size training step with and without gradient
# checkpointing (bench/memory.py), the four benchmarks in bf16, one epoch of the Twitter-2017 recipe on the real
# Twitter-2017 text, each with its absolute wall time, and two training steps under every accelerate configuration
# (single process, DDP, FSDP, DeepSpeed ZeRO-2 and ZeRO-3) on the GPUs found. A failing command does not stop the
# others; the summary at the end says what ran, what failed and what could not run and why. Nothing here needs the
# network.
#
#   bash bench/gpu_check.sh [DATA_DIR]        (default DATA_DIR: data/twitter2017, the UMT text files)
#   bash bench/gpu_check.sh --prepare-only    (any machine: build the epoch's inputs and print the commands)
#
# The epoch runs recipes/twitter2017.yaml as written (batch 40, n 64, ResNet-152 at 224 px, 6-layer CrossTransformer,
# caption decoder 512, PixelCNN++ 80 x 5) with three changes that no timing depends on: the text encoder is a
# randomly initialised BERT-base (bert-base-uncased's shape, with the uncased vocabulary of the offline MiniLM's
# tokenizer) because the Hub is out of reach, the ResNet-152 starts from random weights for the same reason, and every
# image is the grey placeholder because no Twitter images are available. Its scores are therefore meaningless; its
# times are those of the paper's setting. It runs once in float32 (as the recipe) and once with
# `--mixed_precision bf16`; all_results.json of each gives train_runtime_seconds (training plus validation).
set -euo pipefail
cd "$(dirname "$0")/.."

prepare_only=false
if [[ "${1:-}" == "--prepare-only" ]]; then
    prepare_only=true
    shift
fi
data_dir=$(realpath -m "${1:-data/twitter2017}")
work=${GPU_CHECK_DIR:-outputs/gpu_check}
mkdir -p "$work"

# The epoch's inputs: a random BERT-base text encoder and the recipe's arguments for one epoch without images.
python - "$data_dir" "$work" <<'PY'
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging

from muse_training.arguments import offline_text_model_path

logging.disable_progress_bar()

data_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
encoder = work / "random-bert-base-uncased"
if not (encoder / "config.json").is_file():
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(encoder)  # BertConfig(): bert-base-uncased's shape, pooler included
    AutoTokenizer.from_pretrained(offline_text_model_path()).save_pretrained(encoder)
arguments = yaml.safe_load(Path("recipes/twitter2017.yaml").read_text())
del arguments["image_dir"]
arguments.update(
    data_dir=str(data_dir),
    missing_images="placeholder",
    text_model_name_or_path=str(encoder),
    pretrained_vision=False,
    num_train_epochs=1,
    overwrite_output_dir=True,
)
for precision in ("fp32", "bf16"):
    (work / f"epoch-{precision}.yaml").write_text(
        yaml.safe_dump({**arguments, "output_dir": str(work / f"epoch-{precision}")}, sort_keys=False)
    )
print(f"epoch inputs in {work}: random BERT-base encoder, epoch-fp32.yaml, epoch-bf16.yaml (data: {data_dir})")
PY

commands=(
    "python bench/memory.py --device cuda --budget_gb 80"
    "python bench/exchange_speed.py --device cuda --dtype bfloat16"
    "python bench/training_step.py --device cuda --dtype bfloat16"
    "python bench/pipeline_speed.py --device cuda --dtype bfloat16"
    "python bench/epoch_cost.py --device cuda --dtype bfloat16 --data_dir $data_dir"
    "accelerate launch --config_file accelerate_configs/single_process.yaml run_mner.py $work/epoch-fp32.yaml"
    "accelerate launch --config_file accelerate_configs/single_process.yaml --mixed_precision bf16 run_mner.py $work/epoch-bf16.yaml"
)
# One short training run (two optimizer steps of the bundled quick-start sample, no evaluation) under each accelerate
# configuration, with num_processes = the GPUs found; fsdp and single_process once more with --gradient_checkpointing.
launch_configs=(single_process ddp fsdp deepspeed_zero2 deepspeed_zero3)
launch_step() {  # config, extra arguments...
    local config=$1
    shift
    echo "accelerate launch --config_file accelerate_configs/$config.yaml --num_processes $gpus run_mner.py" \
        "--max_train_steps 2 --do_eval false --do_predict false --overwrite_output_dir true" \
        "--output_dir $work/launch-$config$([[ $# -gt 0 ]] && echo -gc) $*"
}
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -lt 1 ]]; then
    gpus=1  # for --prepare-only on a machine without GPUs
fi
launch_commands=()
for config in "${launch_configs[@]}"; do
    processes=$gpus
    [[ $config == single_process ]] && processes=1
    launch_commands+=("$(gpus=$processes launch_step "$config")")
done
launch_commands+=("$(gpus=1 launch_step single_process --gradient_checkpointing)")
launch_commands+=("$(launch_step fsdp --gradient_checkpointing)")

if $prepare_only; then
    printf '%s\n' "${commands[@]}" "${launch_commands[@]}"
    exit 0
fi
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh needs a CUDA GPU (torch.cuda.is_available() is False); --prepare-only runs anywhere.')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}')"

# Fail-soft: a command that fails is reported and the next one runs; the summary at the end lists every outcome.
summary=()
run_checked() {  # command
    local command=$1 start status
    echo
    echo "== $command"
    start=$(date +%s.%N)
    if $command; then status=ok; else status="FAILED (exit $?)"; fi
    local seconds
    seconds=$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")
    echo "== wall time $seconds s, $status: $command"
    summary+=("$status, $seconds s: $command")
}
not_run() {  # command, reason
    echo
    echo "== not run: $1 ($2)"
    summary+=("NOT RUN ($2): $1")
}

for command in "${commands[@]}"; do
    run_checked "$command"
done

has_deepspeed=$(python -c "import importlib.util; print(importlib.util.find_spec('deepspeed') is not None)")
for command in "${launch_commands[@]}"; do
    if [[ $command == *deepspeed* && $has_deepspeed != True ]]; then
        not_run "$command" "deepspeed is not installed: pip install deepspeed"
        continue
    fi
    if [[ $gpus -lt 2 && ( $command == *ddp.yaml* || $command == *fsdp.yaml* || $command == *deepspeed* ) ]]; then
        echo "(one GPU: this multi-process configuration runs as one process, so nothing is split across GPUs)"
    fi
    run_checked "$command"
done

echo
if python - "$work" <<'PY'
import json
import sys
from pathlib import Path

for precision in ("fp32", "bf16"):
    results = json.loads((Path(sys.argv[1]) / f"epoch-{precision}" / "all_results.json").read_text())
    print(
        f"Twitter-2017 recipe, one epoch ({precision}): {results['train_runtime_seconds']:.1f} s training + validation "
        f"({results['num_train_samples']} + {results['num_validation_samples']} posts, "
        f"{results['train_samples_per_second']:.1f} training posts/s), whole run {results['wall_time_seconds']:.1f} s"
    )
PY
then :; else echo "(no epoch results: see the epoch runs' output above)"; fi

echo
echo "== summary ($gpus GPU(s) found)"
printf '%s\n' "${summary[@]}"
