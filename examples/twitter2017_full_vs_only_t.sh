#!/usr/bin/env bash
# Full MuSE versus the only-T ablation on the real Twitter-2017 text (train/valid/test 3373/723/723 posts) with the
# offline MiniLM text encoder, 3 epochs, seed 42, batch 32, lr 5e-5 (the settings of the plain MiniLM+CRF
# reference in the README). No Twitter images exist on this machine: every image is the grey placeholder, so the
# image branch sees a constant image and the figure measures what the architecture costs or gives without vision.
# The backbone (resnet18, 96 px) and the decoders are small to fit a CPU; the CrossTransformer has the paper's
# 6 layers, exchange layers 2-4, theta 0.1, n = 64, P = 8.
#
#   bash examples/twitter2017_full_vs_only_t.sh [DATA_DIR]     (default: data/twitter2017)
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-data/twitter2017}
for variant in full only_t; do
    python run_mner.py --dataset_name twitter2017 --data_dir "$data_dir" --missing_images placeholder \
        --variant "$variant" --vision_model_name resnet18 --no-pretrained_vision --image_size 96 \
        --caption_decoder_dim 64 --pixelcnn_filters 16 --pixelcnn_resnet_blocks 1 \
        --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --learning_rate 5e-5 \
        --num_train_epochs 3 --seed 42 --overwrite_output_dir --output_dir "outputs/twitter2017-$variant"
done
python - <<'PY'
import json
print(f"{'variant':<8}{'test P':>8}{'test R':>8}{'test F1':>9}{'s/epoch':>9}")
for variant in ("full", "only_t"):
    r = json.load(open(f"outputs/twitter2017-{variant}/all_results.json"))
    print(f"{variant:<8}{100 * r['test_precision']:>8.2f}{100 * r['test_recall']:>8.2f}{100 * r['test_f1']:>9.2f}"
          f"{r['train_runtime_seconds'] / r['train_epochs']:>9.1f}")
PY
