"""Tests of the Gradio demo (`app.py`): its API through `gradio_client` and its page in a real headless Chromium.

The app runs as a real process (``python app.py --ner_model ... --sentiment_model ... --port ...``) on a free local
port, serving tiny random models saved by the tests. The browser is Debian's Chromium (``apt-get install chromium
chromium-driver``), driven by Playwright; nothing is downloaded at run time.

Run as a script, the browser test's code makes the README's screenshot from the quick starts' models::

    python tests/test_app.py --screenshot docs/demo.png
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Neither the app nor its clients may reach gradio's or the Hub's servers.
OFFLINE_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
STARTUP_TIMEOUT = 300.0
BROWSER_TIMEOUT_MS = 120_000
TEXT = "Lionel Messi visits Paris with friends"


def load_app_module():
    """app.py as a module; it lives at the repository root, which is not an installed package."""
    spec = importlib.util.spec_from_file_location("muse_demo_app", REPOSITORY_ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the module runs
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_app(arguments: list[str], log_path: Path, temp_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start ``python app.py ARGUMENTS --port <free port>``; returns the process and its URL at once."""
    port = free_port()
    environment = {**os.environ, **OFFLINE_ENVIRONMENT, "GRADIO_TEMP_DIR": str(temp_dir)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPOSITORY_ROOT / "app.py"), *arguments, "--port", str(port)],
            cwd=REPOSITORY_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}/"


def wait_until_serving(process: subprocess.Popen, url: str, log_path: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app.py did not serve {url} within {STARTUP_TIMEOUT} s:\n{log_path.read_text()}")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def drive_demo(url: str, screenshot_path: Path, user_data_dir: Path) -> dict:
    """Load the page in headless Chromium, submit the first example, and read what the page shows.

    Returns the example's text, the status line, the highlighted pieces ``(text, label)``, the sentiment block's
    text, the natural size of the NER exchange picture, and every request that went anywhere but the app.
    The full page is saved to ``screenshot_path``.
    """
    from playwright.sync_api import expect, sync_playwright

    outside_requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: None if request.url.startswith((url, "data:", "blob:"))
                    else outside_requests.append(request.url))
            page.goto(url)
            page.locator("#examples tbody tr").first.click()
            expect(page.locator("#post-image img")).to_be_visible(timeout=BROWSER_TIMEOUT_MS)
            text = page.locator("#post-text textarea").input_value()
            page.locator("#analyse").click()
            expect(page.locator("#status")).to_contain_text("Done", timeout=BROWSER_TIMEOUT_MS)
            picture = page.locator("#ner-exchange img")
            expect(picture).to_be_visible(timeout=BROWSER_TIMEOUT_MS)
            page.wait_for_function("element => element.complete && element.naturalWidth > 0",
                                   arg=picture.element_handle())
            pieces = [
                (token.locator(".text").inner_text(), token.locator(".label").inner_text())
                for token in page.locator("#entities .token.highlighted").all()
            ]
            seen = {
                "text": text,
                "status": page.locator("#status").inner_text(),
                "highlighted": pieces,
                "sentiment": page.locator("#sentiment").inner_text(),
                "exchange_size": picture.evaluate("element => [element.naturalWidth, element.naturalHeight]"),
            }
            page.screenshot(path=str(screenshot_path), full_page=True)
            # The same page, with the text removed: the message replaces the results.
            page.locator("#post-text textarea").fill("")
            page.locator("#analyse").click()
            expect(page.locator("#status")).to_contain_text("Cannot analyse this post", timeout=BROWSER_TIMEOUT_MS)
            seen["empty_text_status"] = page.locator("#status").inner_text()
            seen["highlighted_after_error"] = page.locator("#entities .token.highlighted").count()
        finally:
            browser.close()
    seen["outside_requests"] = outside_requests
    return seen


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def app_module():
    return load_app_module()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    from tiny_models import SENTIMENT_LABELS, tiny_config, tiny_processor

    from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification

    torch.manual_seed(0)
    ner = MuSEForTokenClassification(tiny_config())
    # A fresh head's emissions are ~0 and the CRF would tag every word alike; larger weights give varied entities.
    torch.nn.init.normal_(ner.tagger.classifier.weight, std=1.0)
    sentiment = MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS))
    torch.nn.init.normal_(sentiment.classifier.classifier.weight, std=1.0)
    folders = {"ner": tmp_path_factory.mktemp("ner"), "sentiment": tmp_path_factory.mktemp("sentiment")}
    ner.save_pretrained(folders["ner"])
    tiny_processor().save_pretrained(folders["ner"])
    sentiment.save_pretrained(folders["sentiment"])
    tiny_processor(label_names=None).save_pretrained(folders["sentiment"])
    return {task: str(folder) for task, folder in folders.items()}


@pytest.fixture(scope="module")
def pipelines(checkpoints) -> dict:
    from transformers import pipeline

    return {
        "ner": pipeline("multimodal-ner", model=checkpoints["ner"], device="cpu"),
        "sentiment": pipeline("multimodal-sentiment", model=checkpoints["sentiment"], device="cpu"),
    }


@pytest.fixture(scope="module", autouse=True)
def app_process(checkpoints, tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    # Started before the module's first test and awaited by the tests that use it (app_url), so that the app's
    # imports overlap the in-process tests.
    folder = tmp_path_factory.mktemp("app")
    process, url = launch_app(
        ["--ner_model", checkpoints["ner"], "--sentiment_model", checkpoints["sentiment"]],
        folder / "app.log", folder / "gradio",
    )
    yield process, url, folder / "app.log"
    stop_app(process)


@pytest.fixture(scope="module")
def app_url(app_process) -> str:
    return wait_until_serving(*app_process)


@pytest.fixture(scope="module")
def client(app_url):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE_ENVIRONMENT.items():
            patch.setenv(name, value)
        from gradio_client import Client

        yield Client(app_url, verbose=False, analytics_enabled=False, download_files=False)


def assert_same_entities(left: list[dict], right: list[dict]) -> None:
    assert [{k: v for k, v in entity.items() if k != "score"} for entity in left] == [
        {k: v for k, v in entity.items() if k != "score"} for entity in right
    ]
    assert [entity["score"] for entity in left] == pytest.approx([entity["score"] for entity in right], abs=1e-5)


# ------------------------------------------------------------------------------------------------ startup


def test_missing_quick_start_models_are_named_with_the_command_that_makes_them(app_module, tmp_path):
    models = app_module.load_models(
        None, None, default_ner_model=tmp_path / "muse-twitter2017-sample",
        default_sentiment_model=tmp_path / "muse-mvsa-single-sample",
    )
    assert models.ner is None and models.sentiment is None
    assert "accelerate launch run_mner.py" in models.notes[0] and "muse-twitter2017-sample" in models.notes[0]
    assert "accelerate launch run_msa.py" in models.notes[1] and "muse-mvsa-single-sample" in models.notes[1]
    with pytest.raises(app_module.InputError, match="No model is loaded.*accelerate launch run_mner.py"):
        app_module.analyse_post(models, TEXT, None)
    # The page itself carries the notes (gradio's config, which the browser renders).
    demo = app_module.build_demo(models)
    assert "accelerate launch run_msa.py" in str(demo.get_config_file())


def test_a_default_folder_is_used_when_it_exists(app_module, checkpoints, tmp_path):
    models = app_module.load_models(
        None, None, default_ner_model=Path(checkpoints["ner"]), default_sentiment_model=tmp_path / "absent"
    )
    assert models.ner is not None and models.ner.model.name_or_path == checkpoints["ner"]
    assert models.sentiment is None and len(models.notes) == 1


def test_an_explicit_model_that_does_not_load_stops_the_app_with_the_argument_named(app_module, checkpoints, tmp_path):
    with pytest.raises(SystemExit, match=r"app.py: --ner_model: could not load '.*nothing-here'"):
        app_module.main(["--ner_model", str(tmp_path / "nothing-here")])
    with pytest.raises(SystemExit, match="--ner_model: .* holds a MuSEForSequenceClassification, not a "
                                         "MuSEForTokenClassification"):
        app_module.main(["--ner_model", checkpoints["sentiment"]])


# ------------------------------------------------------------------------------------------------ the API


def test_ner_endpoint_returns_the_pipelines_entities(client, pipelines, photo_path):
    from gradio_client import handle_file

    expected = pipelines["ner"]({"text": TEXT, "image": photo_path})
    assert len(expected) >= 2  # the comparison below means something only with entities to compare
    assert_same_entities(client.predict(TEXT, handle_file(photo_path), api_name="/ner"), expected)


def test_sentiment_endpoint_returns_every_label_with_the_pipelines_probabilities(client, pipelines, photo_path):
    from gradio_client import handle_file

    expected = pipelines["sentiment"]({"text": TEXT, "image": photo_path}, top_k=None)
    served = client.predict(TEXT, handle_file(photo_path), api_name="/sentiment")
    assert [entry["label"] for entry in served] == [entry["label"] for entry in expected]
    assert [entry["score"] for entry in served] == pytest.approx([entry["score"] for entry in expected], abs=1e-6)


def test_the_api_answers_bad_input_with_a_message_that_names_the_field(client, photo_path, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="text: the post is empty"):
        client.predict("   ", handle_file(photo_path), api_name="/ner")
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("these are notes, not a picture")
    with pytest.raises(AppError, match=r"image: the uploaded file is not a readable image") as raised:
        client.predict(TEXT, handle_file(str(not_an_image)), api_name="/sentiment")
    assert "holiday" not in str(raised.value) and str(tmp_path) not in str(raised.value)
    with pytest.raises(AppError, match=r"text: the post has 2001 characters; the demo takes at most 2000"):
        client.predict("x" * 2001, handle_file(photo_path), api_name="/ner")


# ------------------------------------------------------------------------------------------------ attacks


def _call_api(url: str, api_name: str, data: list) -> str:
    """gradio's HTTP API as any client (curl, a script) can call it: POST the payload, read the event stream."""
    import json

    base = f"{url}gradio_api/call/{api_name}"
    request = urllib.request.Request(base, data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=120) as response:
        return response.read().decode()


def _call_page_event(url: str, data: list) -> str:
    """The page's own (private) analyse event, through gradio's queue as the browser calls it."""
    import json
    import uuid

    config = json.loads(urllib.request.urlopen(f"{url}config", timeout=30).read())
    (fn_index,) = [d["id"] for d in config["dependencies"] if d.get("api_name") == "analyse"]
    session = uuid.uuid4().hex
    payload = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    request = urllib.request.Request(f"{url}gradio_api/queue/join", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=120) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def server_files(tmp_path_factory) -> dict[str, str]:
    """Files of the server that no visitor uploaded: a picture, notes, and a path where nothing is."""
    folder = tmp_path_factory.mktemp("server-private")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "private.png")
    (folder / "notes.txt").write_text("not a picture")
    return {"picture": str(folder / "private.png"), "notes": str(folder / "notes.txt"),
            "nothing": str(folder / "absent.png")}


def test_a_visitor_cannot_make_the_demo_read_a_server_file_or_fetch_a_url(app_url, server_files):
    internal = f"{app_url}config"  # a service of this machine; connection-refused ports alike
    payloads = [
        *({"path": path} for path in server_files.values()),
        {"path": server_files["picture"], "meta": {"_type": "gradio.FileData"}},
        {"path": server_files["picture"], "url": internal},
        server_files["picture"],
        internal,
        "http://127.0.0.1:9/photo.png",
        {"path": "/tmp/../" + server_files["picture"].lstrip("/")},
    ]
    for payload in payloads:
        answers = [_call_api(app_url, endpoint, [TEXT, payload]) for endpoint in ("ner", "sentiment")]
        page = _call_page_event(app_url, [TEXT, payload, "simple"])
        # One refusal for every kind: it tells no file that exists from one that does not, no port from another.
        # (gradio itself refuses a payload marked as its FileData, and some payloads of the page's event, before the
        # demo sees them; its message is hidden.)
        marked = isinstance(payload, dict) and "meta" in payload
        for answer in answers:
            assert "event: error" in answer and "entity_group" not in answer, (payload, answer)
            assert marked or "only an image uploaded through the page or the API" in answer, (payload, answer)
        assert "Done" not in page and ('"title":"Error"' in page or "only an image uploaded" in page), (payload, page)
        for answer in (*answers, page):
            for leak in (*server_files.values(), "private", "absent", "notes", "Connection", "Not Found", "HTTP",
                         "refused", str(REPOSITORY_ROOT)):
                assert leak not in answer, (leak, answer)
    relative = _call_api(app_url, "ner", [TEXT, {"path": "photo.png", "meta": {"_type": "gradio.FileData"}}])
    assert "event: error" in relative and str(REPOSITORY_ROOT) not in relative


def test_uploads_over_the_size_limit_are_refused(app_url):
    import uuid

    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + bytes(11 * 2**20) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{app_url}gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 413


# ------------------------------------------------------------------------------------------------ the page


def test_the_page_in_a_real_browser_shows_entities_sentiment_and_the_exchange(
    app_url, app_module, pipelines, tmp_path
):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver (.ci/run does)")
    from modeling_muse.visualize import figure_height_inches

    screenshot = tmp_path / "demo.png"
    seen = drive_demo(app_url, screenshot, tmp_path / "chromium-profile")

    example_text, example_image = app_module.sample_examples()[0]
    assert seen["text"] == example_text
    entities = pipelines["ner"]({"text": example_text, "image": example_image})
    assert entities
    assert seen["highlighted"] == [
        (entity["word"], f"{entity['entity_group']} {entity['score']:.2f}") for entity in entities
    ]
    assert seen["status"] == f"Done: {len(entities)} entities."
    best = pipelines["sentiment"]({"text": example_text, "image": example_image})
    assert seen["sentiment"].split("\n")[1] == best["label"]
    num_layers = len(pipelines["ner"].model.config.exchange_layers)
    assert seen["exchange_size"] == [12 * app_module.EXCHANGE_DPI,
                                     round(figure_height_inches(num_layers) * app_module.EXCHANGE_DPI)]
    assert "text: the post is empty" in seen["empty_text_status"]
    assert seen["highlighted_after_error"] == 0
    assert seen["outside_requests"] == []
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width == 1280 and shot.height > 900


def _make_readme_screenshot(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot the demo with the browser test's code.")
    parser.add_argument("--screenshot", type=Path, default=REPOSITORY_ROOT / "docs" / "demo.png")
    parser.add_argument("--ner_model", default=str(REPOSITORY_ROOT / "outputs" / "muse-twitter2017-sample"))
    parser.add_argument("--sentiment_model", default=str(REPOSITORY_ROOT / "outputs" / "muse-mvsa-single-sample"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        process, url = launch_app(["--ner_model", args.ner_model, "--sentiment_model", args.sentiment_model],
                                  folder / "app.log", folder / "gradio")
        try:
            wait_until_serving(process, url, folder / "app.log")
            seen = drive_demo(url, folder / "demo.png", folder / "chromium-profile")
        finally:
            stop_app(process)
        if seen["outside_requests"]:
            sys.exit(f"the page reached outside the app: {seen['outside_requests']}")
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "demo.png", args.screenshot)
    print(f"{seen['status']} {seen['highlighted']}\nwrote {args.screenshot}")


if __name__ == "__main__":
    _make_readme_screenshot()
