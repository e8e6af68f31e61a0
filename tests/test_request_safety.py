"""What a request may make the server do: which addresses an image URL reaches (server-side request forgery), how long
a request's downloads take and what they leave behind, and how much memory a picture's header can claim.

Every server here listens on 127.0.0.1 or ::1 and is started by the test; the addresses of other networks are
checked by the address policy as a pure function, and end to end with `socket.socket.connect` replaced by a recorder
that refuses every connection, so that nothing is ever sent to them.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import datasets
import pytest
from local_server import QuietHandler, serving
from PIL import Image
from test_handler import load_handler
from test_real_world_inputs import png_chunk, png_header
from tiny_models import save_tiny_checkpoints

import run_msa
from datasets_scripts.user_data import load_user_dataset
from modeling_muse.image_input import DEFAULT_MAX_DECODED_BYTES, ImageFetchError, UnreadableImageError
from modeling_muse.image_input import download_image_bytes, load_post_image
from modeling_muse.url_fetch import is_public_address, is_usable_address
from muse_training.arguments import parse_args
from muse_training.data import load_splits

REPO_ROOT = Path(__file__).resolve().parents[1]

TEXT = "Lionel Messi arrives in Paris with Neymar"


def refused(url: str) -> str:
    """The one message of a fetch that failed, as a pattern."""
    return re.escape(f"could not fetch image URL '{url}': only public http(s) addresses are fetched")


def picture_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class _Recorder(QuietHandler):
    """Serves a picture at any path but /missing (HTTP 404); /redirect?to=<url> redirects there. Every request is
    recorded by the server's class (``requests``: path and Host header)."""

    protocol_version = "HTTP/1.1"
    requests: list[tuple[str, str]]

    def do_GET(self):  # noqa: N802 - the name http.server calls
        type(self).requests.append((self.path, self.headers.get("Host", "")))
        if self.path == "/missing":
            self.send_error(404)
            return
        if self.path.startswith("/redirect?to="):
            self.send_body(b"", {"Location": self.path.removeprefix("/redirect?to=")}, status=302)
            return
        self.send_body(picture_bytes())


def recording_server(host: str, tls: ssl.SSLContext | None = None):
    recorder = type("Recorder", (_Recorder,), {"requests": []})
    return recorder, serving(recorder, host, tls)


@pytest.fixture
def v4_server():
    recorder, server = recording_server("127.0.0.1")
    with server as url:
        yield recorder.requests, int(url.rsplit(":", 1)[1])


@pytest.fixture
def v6_server():
    recorder, server = recording_server("::1")
    with server as url:
        yield recorder.requests, url


def loopback_spellings(port: int) -> list[str]:
    """Every way of writing the address of the 127.0.0.1 server in a URL."""
    hosts = ["127.0.0.1", "localhost", "LOCALHOST", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1",
             "127.000.000.001", "0.0.0.0", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"]  # fmt: skip
    return [f"http://{host}:{port}/photo.png" for host in hosts]


# ----------------------------------------------------------------------------------- the address policy


NOT_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "0.1.2.3", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.254", "192.0.0.1", "192.0.2.1", "198.18.0.1",
    "198.51.100.1", "203.0.113.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.88.99.1",
    "::", "::1", "fd00::1", "fc00::1", "fe80::1", "fe80::1%1", "fec0::1", "ff02::1", "ff0e::1", "2001:db8::1",
    "2001::1", "100::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0.0.0.0",
    "::127.0.0.1", "::a00:1", "2002:7f00:1::", "2002:a00:1::1", "2002:a9fe:a9fe::", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "64:ff9b::c0a8:101", "64:ff9b:1::a00:1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8",
          "2002:808:808::1", "64:ff9b::808:808"]  # fmt: skip


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_no_loopback_private_link_local_or_reserved_address_is_public(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_globally_routable_addresses_are_public(address):
    assert is_public_address(ipaddress.ip_address(address))


def test_the_opt_in_allows_every_address_a_server_can_have():
    for address in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254", "::1", "fd00::1", "fe80::1", "8.8.8.8"):
        assert is_usable_address(ipaddress.ip_address(address)), address
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "::ffff:0.0.0.0", "::ffff:224.0.0.1"):
        assert not is_usable_address(ipaddress.ip_address(address)), address


@pytest.mark.parametrize(
    ("spelling", "resolved"),
    [("localhost", "127.0.0.1"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
     ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("012.0.0.1", "10.0.0.1"), ("167772161", "10.0.0.1"),
     ("0xa9fea9fe", "169.254.169.254"), ("169.254.43518", "169.254.169.254"), ("::ffff:7f00:1", "::ffff:127.0.0.1")],
)  # fmt: skip
def test_every_spelling_is_judged_by_the_address_it_resolves_to(spelling, resolved):
    addresses = {entry[4][0] for entry in socket.getaddrinfo(spelling, 80, type=socket.SOCK_STREAM)}
    assert resolved in addresses
    assert not any(is_public_address(ipaddress.ip_address(address)) for address in addresses)


# ----------------------------------------------------------------------------------------- end to end


def test_no_spelling_of_loopback_is_fetched_by_default(v4_server, v6_server, no_proxy):
    requests, port = v4_server
    v6_requests, v6_url = v6_server
    messages = set()
    for url in [*loopback_spellings(port), f"{v6_url}/photo.png"]:
        with pytest.raises(ImageFetchError, match=refused(url)) as failed:
            load_post_image(url)
        messages.add(str(failed.value).replace(url, "<url>"))
    assert requests == [] and v6_requests == []
    assert len(messages) == 1
    # The same URLs are fetched when asked for (the refusal above is the policy's, not an unreachable server's).
    assert load_post_image(f"http://localhost:{port}/photo.png", allow_private_urls=True).size == (16, 16)
    assert load_post_image(f"{v6_url}/photo.png", allow_private_urls=True).size == (16, 16)
    assert len(requests) == 1 and len(v6_requests) == 1


@pytest.fixture
def recorded_connections(monkeypatch):
    """`socket.socket.connect` replaced by a recorder that refuses every connection: nothing leaves the machine."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise ConnectionRefusedError("recorded, not sent")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


OTHER_NETWORKS = [
    "169.254.169.254", "0xa9fea9fe", "169.254.43518", "10.0.0.1", "012.0.0.1", "167772161", "192.168.1.1",
    "172.16.0.1", "100.64.0.1", "224.0.0.1", "255.255.255.255", "[fd00::1]", "[fe80::1]", "[::]", "[::ffff:10.0.0.1]",
    "[::ffff:a9fe:a9fe]", "[::a00:1]", "[2002:a00:1::]", "[64:ff9b::a9fe:a9fe]", "[2001::1]", "[ff02::1]",
]  # fmt: skip


def test_no_address_of_another_network_is_even_connected_to(recorded_connections):
    for host in OTHER_NETWORKS:
        url = f"http://{host}/latest/meta-data/"
        with pytest.raises(ImageFetchError, match=refused(url)):
            download_image_bytes(url, timeout=5, max_bytes=2**20)
    assert recorded_connections == []
    # The recorder sees a connection that the policy lets through, and its failure gets the same message.
    url = "http://10.0.0.1/photo.png"
    with pytest.raises(ImageFetchError, match=refused(url)):
        download_image_bytes(url, timeout=5, max_bytes=2**20, address_allowed=is_usable_address)
    assert recorded_connections == [("10.0.0.1", 80)]


def test_every_redirect_hop_is_checked_again(v4_server, v6_server, no_proxy):
    """The ::1 server stands for a public host (the policy lets it through with every public address); it redirects
    to every spelling of the 127.0.0.1 server, which must log no request."""
    requests, port = v4_server
    v6_requests, v6_url = v6_server

    def public_or_stand_in(address):
        return is_public_address(address) or address == ipaddress.ip_address("::1")

    for target in loopback_spellings(port):
        url = f"{v6_url}/redirect?to={target}"
        with pytest.raises(ImageFetchError, match=refused(url)):
            download_image_bytes(url, timeout=5, max_bytes=2**20, address_allowed=public_or_stand_in)
    assert requests == []
    assert len(v6_requests) == len(loopback_spellings(port))  # each first hop was made
    # A redirect that the policy allows is followed.
    url = f"{v6_url}/redirect?to=http://127.0.0.1:{port}/photo.png"
    assert download_image_bytes(url, timeout=5, max_bytes=2**20, address_allowed=is_usable_address) == picture_bytes()
    assert requests == [("/photo.png", f"127.0.0.1:{port}")]


def only_v4_loopback(address) -> bool:
    """A policy under which 127.0.0.1 stands for the one public address and ::1 for a private one."""
    return address == ipaddress.ip_address("127.0.0.1")


@pytest.fixture
def rebinding_resolver(monkeypatch):
    """``images.test`` resolves to 127.0.0.1 the first time and to ::1 every time after, as a DNS rebinding attacker's
    name does (127.0.0.1 stands for the public address, ::1 for the private one)."""
    real = socket.getaddrinfo
    lookups = []

    def resolve(host, port, *args, **kwargs):
        if host != "images.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "::1"
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return lookups


def test_the_address_connected_to_is_the_address_checked(v4_server, v6_server, rebinding_resolver, no_proxy):
    requests, port = v4_server
    v6_requests, _ = v6_server
    body = download_image_bytes(f"http://images.test:{port}/photo.png", 5, 2**20, address_allowed=only_v4_loopback)
    assert body == picture_bytes()
    assert rebinding_resolver == ["images.test"]  # one lookup: the one checked
    # The name goes in the Host header; the connection went to the checked address.
    assert requests == [("/photo.png", f"images.test:{port}")] and v6_requests == []


def test_a_name_with_one_refused_address_is_refused(v4_server, monkeypatch, no_proxy):
    requests, port = v4_server
    real = socket.getaddrinfo

    def both(host, *args, **kwargs):
        return real("127.0.0.1", *args, **kwargs) + real("::1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", both)
    url = f"http://images.test:{port}/photo.png"
    with pytest.raises(ImageFetchError):
        download_image_bytes(url, 5, 2**20, address_allowed=only_v4_loopback)
    assert requests == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the name images.test only, made by the openssl command-line tool."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test", "-keyout", str(folder / "key.pem"), "-out",
         str(folder / "cert.pem")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


def test_https_verifies_the_url_s_name_on_the_checked_address(certificate, monkeypatch, no_proxy):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test certificate
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo",
        lambda host, *args, **kwargs: real("127.0.0.1" if host == "images.test" else host, *args, **kwargs),
    )  # fmt: skip
    recorder, server = recording_server("127.0.0.1", tls=context)
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        named = f"https://images.test:{port}/photo.png"
        body = download_image_bytes(named, 5, 2**20, address_allowed=is_usable_address)
        assert body == picture_bytes() and recorder.requests == [("/photo.png", f"images.test:{port}")]
        # The certificate does not name 127.0.0.1: the same server by its address fails, with the one message.
        refused_url = f"https://127.0.0.1:{port}/photo.png"
        with pytest.raises(ImageFetchError, match=refused(refused_url)):
            download_image_bytes(refused_url, 5, 2**20, address_allowed=is_usable_address)
    assert len(recorder.requests) == 1


def test_one_message_for_every_failure(v4_server, no_proxy):
    _, port = v4_server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0))  # accepts connections (in its backlog), never answers
    with listener:
        silent_port = listener.getsockname()[1]
        failing = {
            "refused address": f"http://127.0.0.1:{port}/photo.png",
            "connection refused": f"http://127.0.0.1:{closed_port}/photo.png",
            "timeout": f"http://127.0.0.1:{silent_port}/photo.png",
            "HTTP 404": f"http://127.0.0.1:{port}/missing",
            "TLS failure": f"https://127.0.0.1:{port}/photo.png",
        }
        messages = {}
        for cause, url in failing.items():
            allowed = is_public_address if cause == "refused address" else is_usable_address
            with pytest.raises(ImageFetchError) as failed:
                download_image_bytes(url, 1.0, 2**20, address_allowed=allowed)
            messages[cause] = str(failed.value).replace(url, "<url>")
    assert len(set(messages.values())) == 1, messages
    message = messages["timeout"]
    for revealing in ("refused", "timed out", "404", "SSL", "TLS", "127.0.0.1", "errno", "Errno"):
        assert revealing not in message


# ---------------------------------------------------------------------------------- deadlines and leftovers


TRICKLING_SERVER = textwrap.dedent(
    """
    import socket, sys, time
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        connection, _ = listener.accept()
        started = time.monotonic()
        request = b""
        while b"\\r\\n\\r\\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                break
            request += chunk
        body = b" /body " in request
        try:
            connection.sendall(b"HTTP/1.1 200 OK\\r\\n")
            if body:
                connection.sendall(b"Content-Length: 100000\\r\\n\\r\\n")
            else:
                connection.sendall(b"X-Slow: ")
            while True:  # a byte every 50 ms: each read is quick, the whole never ends
                connection.sendall(b"a")
                time.sleep(0.05)
        except OSError:
            print(f"closed {time.monotonic() - started:.2f}", flush=True)
            connection.close()
    """
)


@pytest.fixture(scope="module")
def trickling_server():
    """A server in its own process that trickles its headers (/headers) or its body (/body) and reports when the
    client hangs up."""
    process = subprocess.Popen([sys.executable, "-c", TRICKLING_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}", process.stdout
    finally:
        process.kill()
        process.wait()


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("route", ["/headers", "/body"])
def test_a_trickling_server_is_cut_off_at_the_deadline_and_nothing_outlives_the_call(trickling_server, route):
    url, reports = trickling_server
    threads, files = threading.active_count(), open_files()
    started = time.monotonic()
    with pytest.raises(ImageFetchError):
        download_image_bytes(f"{url}{route}", timeout=1.5, max_bytes=2**20, address_allowed=is_usable_address)
    assert 1.4 < time.monotonic() - started < 2.5
    assert threading.active_count() == threads and open_files() == files
    # The server sees the connection closed at the deadline (it writes a byte every 50 ms into a closed socket).
    assert select.select([reports], [], [], 3.0)[0], "the server still trickles into an open connection"
    closed = reports.readline().split()
    assert closed[0] == "closed" and float(closed[1]) < 2.5


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("served"))


@pytest.fixture
def silent_server():
    """A port that accepts connections (in the listening socket's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=32) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_request_has_one_deadline_for_all_its_downloads(folders, silent_server, caplog):
    handler = load_handler(folders["ner"], allow_private_urls=True, request_timeout=2)
    posts = [{"text": TEXT, "image": f"{silent_server}/{index}.png"} for index in range(8)]
    threads, files = threading.active_count(), open_files()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        answers = handler({"inputs": posts, "parameters": {"allow_missing_image": True}})
    # The first download waits out the deadline; a timeout per URL would take 8 x 2 s.
    assert 1.9 < time.monotonic() - started < 4.0
    assert len(answers) == 8 and any("8 of 8 posts" in message for message in caplog.messages)
    assert threading.active_count() == threads and open_files() == files
    # A request may shorten the deadline, never lengthen it.
    started = time.monotonic()
    handler({"inputs": posts, "parameters": {"allow_missing_image": True, "timeout": 0.5}})
    assert time.monotonic() - started < 2.0
    with pytest.raises(ValueError, match="timeout=5 is above this endpoint's limit of 2.0"):
        handler({"inputs": posts, "parameters": {"timeout": 5}})


def test_the_pipeline_s_total_timeout_bounds_a_call_s_downloads(folders, silent_server):
    from transformers import pipeline

    # Given when the pipeline is made, the opt-in holds for every call.
    ner = pipeline("multimodal-ner", model=str(folders["ner"]), allow_private_urls=True)
    posts = [{"text": TEXT, "image": f"{silent_server}/{index}.png"} for index in range(4)]
    started = time.monotonic()
    ner(posts, timeout=5, total_timeout=1.0, allow_missing_image=True)
    # The first download waits out the whole 1 s (its address is fetched), the others find no time left.
    assert 0.9 < time.monotonic() - started < 3.0
    with pytest.raises(ValueError, match="total_timeout: expected a positive number of seconds"):
        ner(posts, total_timeout=0)


def test_a_request_holds_at_most_the_endpoint_s_number_of_posts(folders, monkeypatch):
    handler = load_handler(folders["sentiment"])
    assert handler.max_posts == 64
    posts = [{"text": f"post {index}"} for index in range(5000)]
    started = time.monotonic()
    with pytest.raises(ValueError, match="inputs: 5000 posts, more than this endpoint's limit of 64 per request"):
        handler({"inputs": posts, "parameters": {"allow_missing_image": True}})
    assert time.monotonic() - started < 1.0
    assert len(handler({"inputs": posts[:64], "parameters": {"allow_missing_image": True}})) == 64
    assert load_handler(folders["sentiment"], max_posts=3).max_posts == 3
    monkeypatch.setenv("MUSE_MAX_POSTS_PER_REQUEST", "2")
    monkeypatch.setenv("MUSE_REQUEST_TIMEOUT", "3.5")
    handler = load_handler(folders["sentiment"])
    assert (handler.max_posts, handler.request_timeout, handler.allow_private_urls) == (2, 3.5, False)
    with pytest.raises(ValueError, match="inputs: 3 posts, more than this endpoint's limit of 2"):
        handler({"inputs": posts[:3], "parameters": {"allow_missing_image": True}})
    for variable, value, expected in (
        ("MUSE_MAX_POSTS_PER_REQUEST", "lots", "MUSE_MAX_POSTS_PER_REQUEST='lots': expected a positive whole number"),
        ("MUSE_REQUEST_TIMEOUT", "-1", "MUSE_REQUEST_TIMEOUT='-1': expected a positive number of seconds"),
        ("MUSE_ALLOW_PRIVATE_URLS", "maybe", "MUSE_ALLOW_PRIVATE_URLS='maybe': expected True or False"),
    ):
        monkeypatch.setenv(variable, value)
        with pytest.raises(ValueError, match=expected):
            load_handler(folders["sentiment"])
        monkeypatch.delenv(variable)


def test_the_handler_fetches_private_addresses_only_when_its_owner_allows_it(folders, v4_server, monkeypatch, no_proxy):
    requests, port = v4_server
    handler = load_handler(folders["ner"])
    for url in loopback_spellings(port):
        with pytest.raises(ConnectionError, match=refused(url)):
            handler({"inputs": {"text": TEXT, "image": url}})
    with pytest.raises(ValueError, match=r"parameters: \['allow_private_urls'\] are not taken"):
        post = {"text": TEXT, "image": loopback_spellings(port)[0]}
        handler({"inputs": post, "parameters": {"allow_private_urls": True}})
    assert requests == []
    monkeypatch.setenv("MUSE_ALLOW_PRIVATE_URLS", "1")
    assert load_handler(folders["ner"])({"inputs": {"text": TEXT, "image": loopback_spellings(port)[0]}}) is not None
    assert len(requests) == 1


def test_dataset_image_urls_are_fetched_from_private_addresses_only_with_the_flag(tmp_path, v4_server, monkeypatch):
    requests, port = v4_server
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "posts.jsonl"
    url = f"http://localhost:{port}/photo.png"
    data.write_text(f'{{"text": "a post", "label": "good", "image": "{url}"}}\n')
    loaded = load_user_dataset(
        "msa", data_files={"train": data}, missing_images="placeholder", cache_dir=tmp_path / "a"
    )
    assert loaded["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]["path"] is None
    assert requests == []
    # Without the placeholder policy the refusal names the post's URL and the flag, whole.
    with pytest.raises(Exception, match=r"not fetched: .*photo\.png.*--allow_private_urls also fetches from your own network"):
        load_user_dataset("msa", data_files={"train": data}, cache_dir=tmp_path / "d")
    assert requests == []
    from accelerate import Accelerator

    argv = [f"--train_file={data}", f"--validation_file={data}", "--missing_images", "placeholder",
            "--dataset_cache_dir", str(tmp_path / "b")]  # fmt: skip
    splits = load_splits(parse_args(run_msa.TASK, argv), Accelerator(cpu=True))
    assert requests == [] and splits["train"][0]["image"].size == (224, 224)  # the placeholder
    argv[-1] = str(tmp_path / "c")
    splits = load_splits(parse_args(run_msa.TASK, [*argv, "--allow_private_urls"]), Accelerator(cpu=True))
    assert requests and splits["train"][0]["image"].size == (16, 16)


# ----------------------------------------------------------------------------------------- decoded bytes


def zero_png(side: int, bit_depth: int, colour_type: int = 0) -> bytes:
    """A real PNG of ``side`` x ``side`` black pixels, compressed row by row (it is never held decoded here)."""
    channels = {0: 1, 2: 3}[colour_type]
    row = bytes(1 + side * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_header(side, side, bit_depth, colour_type) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def sixteen_bit_bomb(tmp_path_factory) -> Path:
    """9400 x 9400 16-bit greyscale: 172 kB on disk, under PIL's pixel limit, 177 MB decoded and more as RGB."""
    path = tmp_path_factory.mktemp("bomb") / "deep.png"
    path.write_bytes(zero_png(9400, 16))
    assert path.stat().st_size < 250_000
    with Image.open(path) as opened:
        assert opened.mode == "I;16" and opened.size == (9400, 9400)
        assert opened.width * opened.height < Image.MAX_IMAGE_PIXELS
    return path


MEASURED = """
import base64, io, resource, sys
sys.path[:0] = [{root!r}, {tests!r}]
from PIL import Image
from datasets_scripts.images import check_image_file
from modeling_muse.image_input import UnreadableImageError, decode_image, load_post_image, load_rgb_image
from test_handler import load_handler
from pathlib import Path
path = {path!r}
data = open(path, "rb").read()
handler = load_handler(Path({folder!r}))
small = io.BytesIO(); Image.new("RGB", (64, 64)).save(small, format="PNG")
handler({{"inputs": {{"text": "warm up", "image": base64.b64encode(small.getvalue()).decode()}}}})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
refusals = [
    lambda: load_post_image(data),
    lambda: load_post_image(path),
    lambda: load_rgb_image(Image.open(path)),
    lambda: decode_image(io.BytesIO(data), "deep.png"),
    lambda: handler({{"inputs": {{"text": "a post", "image": base64.b64encode(data).decode()}}}}),
]
for refuse in refusals:
    try:
        refuse()
        raise SystemExit("not refused")
    except UnreadableImageError as error:
        assert "refused before decoding" in str(error), error
assert check_image_file(path).startswith("unreadable (refused before decoding"), check_image_file(path)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_a_picture_that_claims_much_memory_is_refused_before_it_is_decoded(sixteen_bit_bomb, folders):
    script = MEASURED.format(root=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"), path=str(sixteen_bit_bomb),
                             folder=str(folders["ner"]))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    peak_growth = int(done.stdout.split()[-1])
    # Decoded, the picture takes 177 MB and its conversion to RGB over a gigabyte.
    assert peak_growth < 40 * 2**20, peak_growth


def test_the_refusal_names_the_picture_the_size_and_the_way_out(sixteen_bit_bomb, folders, caplog):
    with pytest.raises(UnreadableImageError) as refused:
        load_post_image(str(sixteen_bit_bomb))
    message = str(refused.value)
    assert message.startswith(f"image: '{sixteen_bit_bomb}' is refused before decoding: 9400x9400 pixels of PIL mode "
                              f"'I;16' would take {9400 * 9400 * 3} bytes decoded, over max_decoded_bytes="
                              f"{DEFAULT_MAX_DECODED_BYTES}")  # fmt: skip
    assert "pass max_decoded_bytes= to the pipeline" in message
    handler = load_handler(folders["ner"])
    image = base64.b64encode(sixteen_bit_bomb.read_bytes()).decode()
    with pytest.raises(UnreadableImageError, match=r"^image: '\d+ bytes of image data' is refused before decod"):
        handler({"inputs": {"text": TEXT, "image": image}})
    with caplog.at_level(logging.WARNING):
        assert handler({"inputs": [{"text": TEXT, "image": image}], "parameters": {"allow_missing_image": True}})
    assert any("refused before decoding" in message for message in caplog.messages)


def test_the_demo_refuses_the_upload_before_decoding_it(sixteen_bit_bomb, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from test_app import load_app_module

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    upload = tmp_path / "uploads" / "0123abcd" / "deep.png"
    upload.parent.mkdir(parents=True)
    shutil.copy(sixteen_bit_bomb, upload)
    app = load_app_module()
    with pytest.raises(app.InputError, match=r"not a readable image \(refused before decoding: 9400x9400 pixels"):
        app._read_image({"path": str(upload)})


def test_max_decoded_bytes_is_a_pipeline_argument(folders):
    from transformers import pipeline

    ner = pipeline("multimodal-ner", model=str(folders["ner"]))
    post = {"text": TEXT, "image": picture_bytes()}
    assert ner(post, max_decoded_bytes=16 * 16 * 3) == ner(post)
    with pytest.raises(UnreadableImageError, match="16x16 pixels of PIL mode 'RGB' would take 768 bytes decoded, over "
                                                   "max_decoded_bytes=767"):  # fmt: skip
        ner(post, max_decoded_bytes=767)
    with pytest.raises(ValueError, match="max_decoded_bytes: expected a positive int"):
        ner(post, max_decoded_bytes=0)
