"""Hostile input to the training scripts: a checkpoint's pickles, a user's folder as --output_dir, a resumption with
changed arguments, data folders with links that lead out, labels that are markup, and what an upload publishes.

Each test stands for one class of defect of an earlier version, shown with real runs (in this process, or as the
user starts them), real checkpoint folders, real symbolic links and recorded (never sent) Hub calls.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import picture_data
import run_msa
from datasets_scripts import MissingImagesError, OutsideFolderError, load_muse_dataset
from datasets_scripts.user_data import UserDataError, load_user_dataset
from muse_training.checkpoint_files import UnsafeCheckpointFile, check_pickled_files, weights_only_loading
from muse_training.hub_upload import files_to_upload
from tests.tiny_models import tiny_msa_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Canary:
    """Unpickled, it writes ``path``: what a replaced checkpoint file would do with the user's account."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.write_text, (self.path, "the pickle ran")


def _copy_of_run(finished_msa_run: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    """The finished run's folder copied, as it stood after step 2 (later checkpoints gone), and its arguments for
    the copy."""
    output_dir, argv = finished_msa_run
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy, ignore=shutil.ignore_patterns("step_4"))
    return copy, [str(copy) if value == str(output_dir) else value for value in argv]


# ------------------------------------------------------------------------------------------- checkpoint pickles


def _write_canary(path: Path, canary: Path) -> None:
    states = {"step": 2, "random_state": _Canary(canary)}
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(states))  # a plain pickle, as a hand-made file would be
    else:
        torch.save(states, path)  # torch's zip format, as accelerate writes it


@pytest.mark.parametrize(
    "name", ["random_states_0.pkl", "optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "extra/scaler.pt"]
)
def test_a_checkpoint_file_that_would_run_code_is_refused_naming_it(finished_msa_run, tmp_path, name):
    copy, argv = _copy_of_run(finished_msa_run, tmp_path)
    target = copy / "step_2" / name
    target.parent.mkdir(exist_ok=True)
    canary = tmp_path / "canary.txt"
    _write_canary(target, canary)
    with pytest.raises(SystemExit, match=rf"{target} cannot be read .*tensors and plain values only"):
        run_msa.main([*argv, "--resume_from_checkpoint", str(copy / "step_2")])
    assert not canary.exists()


def test_an_honest_checkpoint_still_resumes_exactly(finished_msa_run, tmp_path):
    from safetensors.torch import load_file

    original, _ = finished_msa_run
    copy, argv = _copy_of_run(finished_msa_run, tmp_path)
    run_msa.main([*argv, "--resume_from_checkpoint", str(copy / "step_2")])
    resumed, uninterrupted = load_file(copy / "step_4" / "model.safetensors"), load_file(
        original / "step_4" / "model.safetensors"
    )
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        assert name in {path.name for path in check_pickled_files(copy / "step_4")}


def test_torch_distributed_checkpoint_indexes_are_checked_and_every_load_is_weights_only(tmp_path):
    """The FSDP path (GPU only, so not run here): an honest torch.distributed.checkpoint folder passes, a replaced
    ``.metadata`` (a plain pickle) is refused, and inside `weights_only_loading` even ``weights_only=False`` holds."""
    import torch.distributed.checkpoint as dcp

    honest = tmp_path / "step_2" / "pytorch_model_fsdp_0"
    state = {"model": {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, checkpoint_id=str(honest), no_dist=True)
    assert check_pickled_files(tmp_path / "step_2") == [honest / ".metadata"]
    canary = tmp_path / "canary.txt"
    (honest / ".metadata").write_bytes(pickle.dumps(_Canary(canary)))
    with pytest.raises(UnsafeCheckpointFile, match=r"pytorch_model_fsdp_0/.metadata cannot be read"):
        check_pickled_files(tmp_path / "step_2")
    torch.save({"x": _Canary(canary)}, tmp_path / "custom.pkl")
    before = dict(os.environ)
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "custom.pkl", weights_only=False)
    assert dict(os.environ) == before and not canary.exists()


def test_a_model_or_adapter_folder_s_pickled_weights_never_run(finished_msa_run, tmp_path):
    """transformers and peft read .bin weights weights-only: the same class of file in a model or adapter folder."""
    from modeling_muse import MuSEForSequenceClassification
    from muse_training.lora import load_adapter

    original, _ = finished_msa_run
    canary = tmp_path / "canary.txt"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(original / "config.json", model_dir / "config.json")
    torch.save({"weight": _Canary(canary)}, model_dir / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed"):
        MuSEForSequenceClassification.from_pretrained(model_dir)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["qkv"], "task_type": None})
    )
    torch.save({"weight": _Canary(canary)}, adapter_dir / "adapter_model.bin")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_adapter(MuSEForSequenceClassification.from_pretrained(original), str(adapter_dir))
    assert not canary.exists()


# ------------------------------------------------------------------------------------------- changed arguments


def test_ignore_changed_arguments_resumes_a_run_with_a_changed_argument(finished_msa_run, tmp_path, caplog):
    copy, argv = _copy_of_run(finished_msa_run, tmp_path)
    resumed = [*argv, "--resume_from_checkpoint", str(copy / "step_2"), "--learning_rate", "5e-4"]
    with pytest.raises(SystemExit, match=r"--learning_rate: 0.001 then, 0.0005 now"):
        run_msa.main(resumed)
    with caplog.at_level("WARNING"):
        results = run_msa.main([*resumed, "--ignore_changed_arguments"])
    assert "--ignore_changed_arguments: resuming with changed arguments (--learning_rate: 0.001 then, 0.0005 now)" in (
        caplog.text
    )
    assert results["train_steps"] == 4 and (copy / "step_4" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- the output folder


def _user_folder(folder: Path) -> dict[str, bytes]:
    """A project folder of the user's: a README, results of their own, notes, data and a git folder."""
    files = {
        "README.md": b"# My project\n\nNotes I keep.\n",
        "all_results.json": b'{"my_metric": 1}\n',
        "notes.txt": b"private notes\n",
        "data/posts.csv": b"text,label\nhi,positive\n",
        ".git/HEAD": b"ref: refs/heads/main\n",
    }
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return files


@pytest.mark.slow
def test_a_fresh_run_into_a_user_s_folder_is_refused_and_overwriting_keeps_their_other_files(
    tiny_text_model, script_env, tmp_path
):
    folder = tmp_path / "my-project"
    files = _user_folder(folder)
    command = [sys.executable, "run_msa.py", *tiny_msa_arguments(tiny_text_model, folder)]
    refused = subprocess.run(command, cwd=REPO_ROOT, env=script_env, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert f"--output_dir {folder} already holds files these scripts did not write" in refused.stderr
    assert "--overwrite_output_dir" in refused.stderr and "--resume_from_checkpoint" in refused.stderr
    assert {relative: (folder / relative).read_bytes() for relative in files} == files

    overwritten = subprocess.run(
        [*command, "--overwrite_output_dir"], cwd=REPO_ROOT, env=script_env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert overwritten.returncode == 0, overwritten.stderr[-3000:]
    # The files a run writes are replaced by this run's; nothing else is touched, nor ever uploaded.
    for relative in ("notes.txt", "data/posts.csv", ".git/HEAD"):
        assert (folder / relative).read_bytes() == files[relative], relative
    assert "my_metric" not in (folder / "all_results.json").read_text()
    uploaded = files_to_upload(folder, include_predictions=True)
    assert "model.safetensors" in uploaded and not {"notes.txt", "data", ".git"} & set(uploaded)


def test_evaluating_into_a_folder_with_results_of_its_own_is_refused(finished_msa_run, tmp_path):
    original, _ = finished_msa_run
    folder = tmp_path / "my-project"
    files = _user_folder(folder)
    argv = ["--model_name_or_path", str(original), "--do_train", "false", "--output_dir", str(folder)]
    with pytest.raises(SystemExit, match=rf"--output_dir {folder} already holds all_results.json.*--overwrite_output"):
        run_msa.main(argv)
    assert (folder / "all_results.json").read_bytes() == files["all_results.json"]


# ------------------------------------------------------------------------------------------- the model card

HOSTILE_LABEL = 'positive\n```\n<a href="https://evil.example/">click</a> <img src=x onerror=alert(1)>\n```\n'


def _render(markdown: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


@pytest.mark.slow
def test_labels_and_names_from_the_data_stay_text_in_the_model_card(tiny_text_model, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    files = picture_data.write_jsonl(data, task="msa")
    for split, path in files.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()][:12]
        for row in rows:
            row["label"] = HOSTILE_LABEL if row["label"] == "positive" else row["label"]
        hostile = data / f"{split} <img src=x onerror=alert(2)> _em_ `code` &amp; \\.jsonl"
        hostile.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files[split] = hostile
    output_dir = tmp_path / 'muse "x" <b>y ``` [z](javascript:alert(4))'
    run_msa.main(
        tiny_msa_arguments(tiny_text_model, output_dir, *(f"--{split}_file={path}" for split, path in files.items()),
                  checkpoints=False)
    )  # fmt: skip

    card = ModelCard.load(output_dir / "README.md")
    # The front matter is valid YAML that holds the names as they are.
    assert card.data.model_name == output_dir.name and card.data.license == "apache-2.0"
    html = _render(card.text)
    for tag in ("<a ", "<img", "<b>", "<script"):
        assert tag not in html, tag
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    # The report and the loading snippet are the card's only code blocks, and the snippet names the folder exactly.
    assert html.count("<pre>") == 2
    snippet = card.text.split("python\n")[-1].rsplit("\n`", 1)[0]
    assignment = next(node for node in ast.parse(snippet).body if isinstance(node, ast.Assign))
    assert ast.literal_eval(assignment.value) == output_dir.name


# ------------------------------------------------------------------------------------------- what is uploaded


class _HubRecorder:
    """huggingface_hub.HfApi's network methods, recorded and answered here; nothing is sent."""

    def __init__(self, monkeypatch) -> None:
        import huggingface_hub

        self.calls: list[tuple[str, dict]] = []
        for name in ("create_repo", "repo_info", "create_commit", "upload_folder", "upload_file"):
            monkeypatch.setattr(huggingface_hub.HfApi, name, self._recording(name))

    def _recording(self, name: str):
        def record(api, *args, **kwargs):
            self.calls.append((name, {"args": args, **kwargs}))
            if name == "create_repo":
                return type("RepoUrl", (), {"repo_id": f"someone/{args[0]}"})()
            if name == "repo_info":
                return type("ModelInfo", (), {"private": False})()
            return None

        return record


@pytest.mark.slow
def test_an_upload_holds_the_adapter_without_local_paths_and_no_predictions_unless_asked(
    finished_msa_run, tmp_path, monkeypatch, caplog
):
    base, _ = finished_msa_run
    recorder = _HubRecorder(monkeypatch)
    output_dir = tmp_path / "adapter"
    argv = [
        "--model_name_or_path", str(base), "--use_peft", "--per_device_train_batch_size", "4",
        "--max_train_samples", "8", "--max_eval_samples", "4", "--num_train_epochs", "1", "--output_dir",
        str(output_dir), "--push_to_hub", "--hub_model_id", "muse-adapter", "--do_predict",
    ]  # fmt: skip
    with caplog.at_level("INFO"):
        run_msa.main(argv)
    assert "https://huggingface.co/someone/muse-adapter, a public repository" in caplog.text
    assert "predictions.jsonl stays here (--push_predictions uploads it)" in caplog.text
    assert (output_dir / "predictions.jsonl").is_file()
    assert [name for name, _ in recorder.calls] == ["create_repo", "repo_info", "create_commit"]
    operations = {op.path_in_repo: op for op in recorder.calls[-1][1]["operations"]}
    assert "predictions.jsonl" not in operations and "adapter_config.json" in operations
    contents = {}
    for name, operation in operations.items():
        with operation.as_file() as handle:
            contents[name] = handle.read()
    assert json.loads(contents["adapter_config.json"])["base_model_name_or_path"] is None
    # The local adapter keeps its base's folder, which loading it here needs.
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    for name, content in contents.items():
        for local in (str(tmp_path), str(base.parent), str(REPO_ROOT)):
            assert local.encode() not in content, f"{name} names {local}"


# ------------------------------------------------------------------------------------------- links out of data folders


def _outside_picture(tmp_path: Path) -> Path:
    outside = tmp_path / "private"
    outside.mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(outside / "holiday.jpg")
    return outside


def test_umt_images_and_files_that_link_outside_their_folder_are_not_read(tmp_path):
    outside = _outside_picture(tmp_path)
    data_dir, images = picture_data.write_umt(tmp_path / "umt")
    first = next(iter(sorted(images.iterdir())))
    first.unlink()
    first.symlink_to(outside / "holiday.jpg")
    with pytest.raises(MissingImagesError, match=rf"{first.stem}: unreadable \(a symbolic link that leads outside"):
        load_muse_dataset("umt", data_dir=data_dir, image_dir=images, cache_dir=tmp_path / "cache")
    dataset = load_muse_dataset("umt", data_dir=data_dir, image_dir=images, missing_images="placeholder",
                                cache_dir=tmp_path / "cache2")  # fmt: skip
    from datasets_scripts import count_placeholder_images

    assert sum(count_placeholder_images(split) for split in dataset.values()) == 1
    (outside / "test.txt").write_text((data_dir / "test.txt").read_text())
    (data_dir / "test.txt").unlink()
    (data_dir / "test.txt").symlink_to(outside / "test.txt")
    with pytest.raises(OutsideFolderError, match=rf"{data_dir / 'test.txt'} is a symbolic link"):
        load_muse_dataset("umt", data_dir=data_dir, image_dir=images, missing_images="placeholder",
                          cache_dir=tmp_path / "cache3")  # fmt: skip


def _mvsa_folder(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    lines = ["ID\ttext,image"]
    for post in range(1, 11):
        (folder / "data" / f"{post}.txt").write_text(f"post number {post}")
        Image.new("RGB", (8, 8), (post, 0, 0)).save(folder / "data" / f"{post}.jpg")
        lines.append(f"{post}\tpositive,positive")
    (folder / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("linked", ["data/3.jpg", "data/3.txt", "data", "labelResultAll.txt"])
def test_mvsa_files_and_folders_that_link_outside_the_data_folder_are_not_read(tmp_path, linked):
    outside = _outside_picture(tmp_path)
    folder = _mvsa_folder(tmp_path / "mvsa")
    source = folder / linked
    target = outside / source.name
    shutil.move(source, target)
    source.symlink_to(target, target_is_directory=target.is_dir())
    if linked.endswith(".jpg"):
        with pytest.raises(MissingImagesError, match=r"3: unreadable \(a symbolic link that leads outside"):
            load_muse_dataset("mvsa_single", data_dir=folder, cache_dir=tmp_path / "cache")
        return
    named = folder / ("data/1.txt" if linked == "data" else linked)
    with pytest.raises(OutsideFolderError, match=rf"{named} is a symbolic link, or lies behind one"):
        load_muse_dataset("mvsa_single", data_dir=folder, missing_images="placeholder", cache_dir=tmp_path / "cache")


def test_user_data_image_paths_that_link_outside_the_data_folder_are_not_read(tmp_path):
    outside = _outside_picture(tmp_path)
    files = picture_data.write_jsonl(tmp_path / "jsonl", task="msa")
    images = tmp_path / "jsonl" / "images"
    (tmp_path / "jsonl" / "linked").symlink_to(outside, target_is_directory=True)
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    first = images / Path(rows[0]["image"]).name
    first.unlink()
    first.symlink_to(outside / "holiday.jpg")
    rows[1]["image"] = "linked/holiday.jpg"
    rows[2]["image"] = str(tmp_path / "jsonl" / "linked" / "holiday.jpg")  # absolute, inside the folder by name
    files["train"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(MissingImagesError) as raised:
        load_user_dataset("msa", data_files=files, cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert message.count("a symbolic link that leads outside the data's folder") == 3
    for row in rows[:3]:
        assert repr(row["image"]) in message
    dataset = load_user_dataset("msa", data_files=files, missing_images="placeholder", cache_dir=tmp_path / "cache")
    from datasets_scripts import count_placeholder_images

    assert count_placeholder_images(dataset["train"]) == 3


@pytest.mark.parametrize("linked", ["image", "folder", "data file"])
def test_a_dataset_folder_with_a_link_leading_outside_is_refused_naming_it(tmp_path, linked):
    outside = _outside_picture(tmp_path)
    folder = tmp_path / "dataset"
    picture_data.write_jsonl(folder, task="msa")
    if linked == "image":
        link = next(iter(sorted((folder / "images").iterdir())))
        link.unlink()
        link.symlink_to(outside / "holiday.jpg")
    elif linked == "folder":
        link = folder / "more"
        link.symlink_to(outside, target_is_directory=True)
    else:
        link = folder / "test.jsonl"
        shutil.move(link, outside / "test.jsonl")
        link.symlink_to(outside / "test.jsonl")
    with pytest.raises(UserDataError, match=rf"{link} is a symbolic link that leads outside the dataset folder"):
        load_user_dataset("msa", dataset_name=str(folder), cache_dir=tmp_path / "cache")


def test_a_link_out_of_the_checkpoint_is_refused_and_links_within_it_are_checked(tmp_path):
    """A walk does not enter linked folders, so a hostile ``.metadata`` behind a link would be loaded unchecked: a link
    leading out of the checkpoint is refused naming it; one within it leads to files that are checked anyway."""
    canary = tmp_path / "canary.txt"
    outside = tmp_path / "elsewhere" / "pytorch_model_fsdp_0"
    outside.mkdir(parents=True)
    (outside / ".metadata").write_bytes(pickle.dumps(_Canary(canary)))
    checkpoint = tmp_path / "step_2"
    checkpoint.mkdir()
    torch.save({"step": torch.tensor(2)}, checkpoint / "scheduler.bin")
    (checkpoint / "pytorch_model_fsdp_0").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeCheckpointFile, match=r"step_2/pytorch_model_fsdp_0 cannot be read \(a link to .*outside"):
        check_pickled_files(checkpoint)
    (checkpoint / "pytorch_model_fsdp_0").unlink()
    (checkpoint / "inner").mkdir()
    (checkpoint / "inner" / "optimizer.bin").write_bytes(pickle.dumps(_Canary(canary)))
    (checkpoint / "linked_optimizer.bin").symlink_to(checkpoint / "inner" / "optimizer.bin")
    with pytest.raises(UnsafeCheckpointFile, match=r"cannot be read"):
        check_pickled_files(checkpoint)
    assert not canary.exists()


def test_a_log_written_while_the_model_is_saved_is_neither_listed_nor_uploaded(finished_msa_run, tmp_path):
    """The marker lists the files a save changed; the console log (``train.log`` beside a reproduce.py run) changes
    meanwhile, and must not be taken for a model file and uploaded. An older marker that lists it is not trusted."""
    from accelerate import Accelerator

    from modeling_muse import MuSEForSequenceClassification
    from muse_training.checkpoints import save_model
    from processing_muse import MuSEProcessor

    original, _ = finished_msa_run
    model = MuSEForSequenceClassification.from_pretrained(original)
    processor = MuSEProcessor.from_pretrained(original)
    folder = tmp_path / "out"
    folder.mkdir()
    log = folder / "train.log"
    log.write_text("epoch 1\n")
    save_processor = processor.save_pretrained

    def save_while_logging(*args, **kwargs):
        with log.open("a") as handle:
            handle.write("saving the best model\n")
        return save_processor(*args, **kwargs)

    processor.save_pretrained = save_while_logging
    save_model(Accelerator(cpu=True), model, processor, str(folder), {"step": 4})
    listed = json.loads((folder / "best_model.json").read_text())["files"]
    assert "model.safetensors" in listed and "train.log" not in listed
    assert "train.log" not in files_to_upload(folder, include_predictions=True)
    marker = json.loads((folder / "best_model.json").read_text())
    (folder / "best_model.json").write_text(json.dumps({**marker, "files": [*listed, "train.log", "args.yaml"]}))
    (folder / "args.yaml").write_text("hub_token: secret\n")
    uploaded = files_to_upload(folder)
    assert "model.safetensors" in uploaded and not {"train.log", "args.yaml"} & set(uploaded)
