"""What `run_mner.py` and `run_msa.py` share, one concern per module, in the order a run uses them.

- `arguments`: the command line and argument files (`arguments.command_line`, dataclasses for
  `transformers.HfArgumentParser`), the quick-start and paper tables (`arguments.defaults`), the one place where unset
  arguments take them and the arguments are checked (`arguments.resolution`), and the two tasks (`arguments.tasks`).
- `data`: the splits (the paper's datasets, or the user's own through `datasets_scripts.user_data`), their one-line
  reports, the processor and the data loaders.
- `models`: a fresh MuSE around pretrained towers, or a trained one (``--model_name_or_path``) relabelled for the data.
- `optimization`: AdamW with a separate learning rate for the task head, and the learning-rate schedule.
- `loop`: the start of a run (arguments, Accelerator, seed, splits, output folder), the optimizer and devices, and
  the training loop with validation after every epoch.
- `logs`: logging set-up, the loss meter and the per-epoch summary line.
- `divergence`: a NaN or infinite loss term, weight or validation loss stops the run before anything is saved.
- `checkpoints`: checkpoint/resume, the output folder, the best model kept in it.
- `evaluation`: a split's predictions, labels and loss, gathered over processes without duplicates;
  `predictions`: the ``predictions.jsonl`` file.
- `results`: `all_results.json`, the console's test line; `model_card`: the model card; `hub`: the Hub upload.

Conventions follow transformers' `examples/pytorch/token-classification/run_ner_no_trainer.py` (argument names,
``step_N``/``epoch_N`` checkpoints, ``all_results.json``).
"""
