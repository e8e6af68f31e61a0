#!/usr/bin/env bash
# The MNER quick start as two data-parallel processes, on CPU (gloo) or on two GPUs (NCCL).
#
#   bash examples/two_process_quickstart.sh [extra run_mner.py arguments]
#
# `accelerate launch --multi_gpu` starts the processes; on a machine without an accelerator, run_mner.py turns
# them into one gloo process group (muse_training.loop.create_accelerator). Each process trains on half of every
# epoch, gradients are averaged, validation/test predictions are gathered without duplicates, and only the main
# process writes files and shows the progress bar. Threads per process default to 1, so that two processes fit on
# a two-core machine; raise OMP_NUM_THREADS on a bigger one.
set -euo pipefail
cd "$(dirname "$0")/.."

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    run_mner.py --output_dir outputs/muse-twitter2017-sample-2proc --overwrite_output_dir "$@"
