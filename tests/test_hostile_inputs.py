"""Hostile and broken input: downloads, dataset ids, tokens, resource bounds, resumption, long lines, a plain install.

Each test stands for one defect of an earlier version, shown with real local servers, real files and real runs (the
demo's own attacks are in tests/test_app.py, against the running app).
"""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from local_server import QuietHandler, serving
from PIL import Image

import reproduce
import run_msa
from datasets_scripts import MVSAFormatError, UMTFormatError, load_muse_dataset
from datasets_scripts.umt import read_umt_file
from modeling_muse.image_input import MAX_REDIRECTS, ImageFetchError, download_image_bytes, load_post_image
from modeling_muse.url_fetch import is_usable_address
from muse_training.arguments import parse_args
from processing_muse import UnreadableImageError
from tests.tiny_models import tiny_processor

REPO_ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------- downloads

INFLATED_BYTES = 200 * 2**20


class _HostileServer(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - the name http.server calls
        route = self.path.split("?")[0]
        if route == "/gzip":
            self.send_body(gzip.compress(bytes(INFLATED_BYTES), compresslevel=9), {"Content-Encoding": "gzip"})
        elif route == "/deflate":
            self.send_body(zlib.compress(bytes(INFLATED_BYTES), 9), {"Content-Encoding": "deflate"})
        elif route == "/loop":
            self.send_body(b"", {"Location": "/loop"}, status=302)
        elif route == "/to-ftp":
            self.send_body(b"", {"Location": "ftp://127.0.0.1/secret.png"}, status=302)
        elif route.startswith("/hop"):
            # /hopN redirects to /hop(N-1), and /hop0 trickles its body: the deadline covers every hop.
            hops = int(route[4:])
            if hops:
                time.sleep(0.3)
                self.send_body(b"", {"Location": f"/hop{hops - 1}"}, status=302)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.01)
        else:
            self.send_body(b"", {}, status=404)


@pytest.fixture(scope="module")
def hostile_server():
    with serving(_HostileServer) as url:
        yield url


def refused_with_cause(caplog, url: str, timeout: float = 10) -> str:
    """Fetch ``url`` from the loopback test server (private addresses allowed): the one message every failed fetch
    gets, and the cause, which only the operator's DEBUG log tells."""
    with caplog.at_level(logging.DEBUG, logger="modeling_muse.image_input"):
        with pytest.raises(ImageFetchError, match=r"^image: could not fetch image URL '.*': only public http\(s\)"):
            download_image_bytes(url, timeout=timeout, max_bytes=2**20, address_allowed=is_usable_address)
    return caplog.messages[-1]


@pytest.mark.parametrize("route", ["/gzip", "/deflate"])
def test_a_compressed_body_is_refused_without_being_inflated(hostile_server, no_proxy, caplog, route):
    # 200 MB of zeros in a few hundred kilobytes: decoded as it streams, the body would pass a 1 MB cap only after
    # the process had taken the whole of it.
    assert "compressed body although none was asked for" in refused_with_cause(caplog, f"{hostile_server}{route}")


def test_redirects_are_bounded_and_kept_to_http(hostile_server, no_proxy, caplog):
    assert "more than 5 redirects" in refused_with_cause(caplog, f"{hostile_server}/loop")
    to_ftp = refused_with_cause(caplog, f"{hostile_server}/to-ftp")
    assert "'ftp://127.0.0.1/secret.png' is not an http(s) URL" in to_ftp
    assert MAX_REDIRECTS <= 5
    started = time.monotonic()
    assert "TimeoutError" in refused_with_cause(caplog, f"{hostile_server}/hop3", timeout=2.0)
    assert time.monotonic() - started < 4.0


# ------------------------------------------------------------------------------------------- dataset ids


@pytest.mark.parametrize(
    ("image_id", "problem"),
    [("../private/holiday", "path separator"), ("/etc/hostname", "path separator"), ("..", "names a folder"),
     ("12\x0034", "NUL byte")],
)
def test_an_umt_id_that_leaves_the_image_folder_is_refused_with_file_and_line(tmp_path, image_id, problem):
    (tmp_path / "secret.jpg").write_bytes(b"not for export")
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text(f"IMGID:1\nObama\tB-PER\n\nIMGID:{image_id}\nParis\tB-LOC\n")
    with pytest.raises(UMTFormatError, match=rf"train.txt:4: invalid image id .*{problem}"):
        read_umt_file(tmp_path / "train.txt")
    with pytest.raises(UMTFormatError, match=problem):
        load_muse_dataset("umt", data_dir=tmp_path, image_dir=tmp_path / "images", missing_images="placeholder",
                          cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("post_id", ["../../notes", "/tmp/notes", "a\x00b"])
def test_an_mvsa_id_that_leaves_the_data_folder_is_refused_with_file_and_line(tmp_path, post_id):
    data = tmp_path / "mvsa" / "data"
    data.mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("private notes outside the dataset")
    (data / "1.txt").write_text("a post")
    Image.new("RGB", (8, 8)).save(data / "1.jpg")
    lines = ["ID\ttext,image", "1\tpositive,positive", f"{post_id}\tpositive,positive"]
    (tmp_path / "mvsa" / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(MVSAFormatError, match=r"labelResultAll.txt:3: invalid ID"):
        load_muse_dataset("mvsa_single", data_dir=tmp_path / "mvsa", cache_dir=tmp_path / "cache")


def test_a_ten_megabyte_line_is_quoted_in_a_hundred_characters(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("IMGID:1\n" + "x" * 10_000_000 + "\n")
    with pytest.raises(UMTFormatError) as raised:
        read_umt_file(path)
    message = str(raised.value)
    assert len(message) < 400 and "(10000000 characters)" in message and "without a TAB" in message


# ------------------------------------------------------------------------------------------- tokens


def test_a_hub_token_never_goes_into_a_run_s_arguments_file_or_output(tmp_path, capsys):
    argv = ["table1", "--set", "push_to_hub=true", "--set", "hub_token=hf_secret"]
    assert reproduce.main([*argv, "--dry_run", "--runs_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "push_to_hub" in printed and "hf_secret" not in printed
    options = reproduce.parse_args(argv)
    assert options.environment == {"HF_TOKEN": "hf_secret"}  # how every run receives it
    run = reproduce.Run(reproduce.load_recipes()["twitter2017"], 42, tmp_path / "run")
    arguments = reproduce.run_arguments(run, options)
    assert arguments["push_to_hub"] == "true" and "hub_token" not in arguments
    recipe = tmp_path / "run.yaml"
    recipe.write_text("hub_token: hf_secret\npush_to_hub: true\n")
    with pytest.raises(SystemExit):
        parse_args(run_msa.TASK, [str(recipe)])
    error = capsys.readouterr().err
    assert "hub_token is a secret and never goes into a file" in error and "hf_secret" not in error


# ------------------------------------------------------------------------------------------- resources


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    side = int((1.5 * limit) ** 0.5)  # between one and two times the limit: PIL itself only warns
    path = tmp_path / "large.png"
    Image.new("L", (side, side)).save(path, optimize=True)
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(UnreadableImageError, match="decompression bomb"):
        load_post_image(str(path))
    with pytest.raises(UnreadableImageError, match="decompression bomb"):
        tiny_processor()(images=[str(path)], text=["a post"])


def test_a_post_of_a_million_words_tokenises_only_what_the_model_can_read(monkeypatch):
    processor = tiny_processor(max_length=16)
    seen = []
    tokenize = type(processor.tokenizer).__call__

    def recording(self, text, *args, **kwargs):
        seen.append(sum(len(item) if isinstance(item, list) else 1 for item in text))
        return tokenize(self, text, *args, **kwargs)

    monkeypatch.setattr(type(processor.tokenizer), "__call__", recording)
    words = [f"w{index % 1000}" for index in range(1_000_000)]
    report = processor.text_report([words])
    assert report.words == 1_000_000 and report.cut_words > 999_980
    assert max(seen) <= 1000  # the distinct words of the first max_length, then the first max_length words


# ------------------------------------------------------------------------------------------- resumption


def test_resuming_with_a_changed_learning_rate_is_refused_naming_it(finished_msa_run, capsys):
    output_dir, argv = finished_msa_run
    resumed = [*argv, "--resume_from_checkpoint", str(output_dir / "step_2"), "--learning_rate", "5e-5"]
    with pytest.raises(SystemExit, match=r"--learning_rate: 0.001 then, 5e-05 now.*--ignore_changed_arguments"):
        run_msa.main(resumed)


def test_a_damaged_random_state_file_stops_the_resumption_naming_it(finished_msa_run, tmp_path):
    import shutil

    output_dir, argv = finished_msa_run
    copy = tmp_path / "step_2"
    shutil.copytree(output_dir / "step_2", copy)
    (copy / "random_states_0.pkl").write_bytes(b"\x80\x04 damaged")
    with pytest.raises(SystemExit, match=r"random_states_0.pkl cannot be read"):
        run_msa.main([*argv, "--resume_from_checkpoint", str(copy)])


def test_a_truncated_checkpoint_model_stops_naming_the_folder(finished_msa_run, tmp_path):
    import shutil

    output_dir, argv = finished_msa_run
    copy = tmp_path / "step_2"
    shutil.copytree(output_dir / "step_2", copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit, match=rf"{copy} cannot be loaded .*Delete it"):
        run_msa.main([*argv, "--resume_from_checkpoint", str(copy)])


def test_a_malformed_progress_file_names_itself_for_latest(finished_msa_run, tmp_path):
    import shutil

    output_dir, argv = finished_msa_run
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy)
    (copy / "step_2" / "training_progress.json").write_text('{"completed_steps": ')
    argv = [value if value != str(output_dir) else str(copy) for value in argv]
    with pytest.raises(SystemExit, match=r"step_2/training_progress.json is damaged .*delete that folder"):
        run_msa.main([*argv, "--resume_from_checkpoint", "latest"])


def test_latest_in_a_finished_run_without_checkpoints_keeps_its_model(finished_msa_run, tmp_path):
    """``--resume_from_checkpoint latest`` starts afresh only where a run was interrupted before its first checkpoint;
    in a finished run's folder whose checkpoints are gone it must not delete the trained model."""
    import shutil

    output_dir, argv = finished_msa_run
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy)
    for checkpoint in copy.glob("step_*"):
        shutil.rmtree(checkpoint)
    kept = {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()}
    argv = [value if value != str(output_dir) else str(copy) for value in argv]
    with pytest.raises(SystemExit, match=rf"--output_dir {copy} already holds an earlier run"):
        run_msa.main([*argv, "--resume_from_checkpoint", "latest"])
    assert {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()} == kept


# ------------------------------------------------------------------------------------------- the Hub


def test_loading_a_hub_model_is_left_to_huggingface_hub(monkeypatch):
    """No probe of the Hub's address of our own (it ignored HTTPS_PROXY): the download is huggingface_hub's."""
    import socket

    from modeling_muse import text_encoder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def no_socket(*args, **kwargs):
        raise AssertionError("MuSE opened a connection itself")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    calls = []

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        raise OSError("the proxy said no")

    monkeypatch.setattr(text_encoder.AutoModel, "from_pretrained", from_pretrained)
    with pytest.raises(OSError, match=r"'someone/bert'.*the download failed \(the proxy said no\)"):
        text_encoder.load_pretrained_text_backbone("someone/bert")
    assert calls == [("someone/bert", {})]


# ------------------------------------------------------------------------------------------- a plain install


def test_the_code_a_checkpoint_carries_imports_only_what_the_readme_lists():
    """modeling_muse/ imports the standard library, torch, transformers, timm, pytorch-crf, safetensors, Pillow,
    numpy and huggingface_hub (transformers' own dependency) and nothing else: no HTTP client of gradio's."""
    import ast

    allowed = {"torch", "transformers", "timm", "torchcrf", "safetensors", "PIL", "numpy", "huggingface_hub"}
    # Command-line tools of the package, each with its extra; no model file imports them, so no checkpoint carries
    # them (save_pretrained copies the model's and the pipelines' relative imports). onnx_runtime.py travels with a
    # checkpoint for its handler, but imports the onnx extra only when an ONNX export is served (and the export then
    # names it in the folder's requirements.txt).
    optional = {
        "visualize.py": {"matplotlib"},
        "export_onnx.py": {"onnx", "onnxscript", "onnx_ir", "onnxruntime"},
        "onnx_runtime.py": {"onnx", "onnxruntime"},
    }
    for path in sorted((REPO_ROOT / "modeling_muse").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                assert top in allowed or top in optional.get(path.name, ()), (path.name, name)


def test_importing_modeling_muse_needs_no_http_client(tmp_path):
    """In a process where httpx and requests cannot be imported, the package imports and the pipeline runs."""
    script = tmp_path / "plain.py"
    script.write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'httpx', 'requests', 'gradio', 'aiohttp'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})\n"
        "from tiny_models import tiny_config, tiny_processor\n"
        "import modeling_muse\n"
        "from modeling_muse import MuSEForTokenClassification\n"
        "from transformers import pipeline\n"
        "from PIL import Image\n"
        f"folder = {str(tmp_path / 'ner')!r}\n"
        "MuSEForTokenClassification(tiny_config()).save_pretrained(folder)\n"
        "tiny_processor().save_pretrained(folder)\n"
        "print(pipeline('multimodal-ner', model=folder)({'text': 'Messi visits Paris', 'image': Image.new('RGB', (8, 8))}))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("[")
