"""Local HTTP servers for the tests that fetch images (no network beyond 127.0.0.1 and ::1)."""

from __future__ import annotations

import functools
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer


class QuietFileHandler(SimpleHTTPRequestHandler):
    """Serves a folder's files without logging each request."""

    def log_message(self, *args) -> None:
        pass


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and sends whole bodies with `send_body`."""

    def log_message(self, *args) -> None:
        pass

    def send_body(self, body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> None:
        """Answer with ``status``, ``headers``, the body's length and ``body``."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serving_files(directory: str) -> type[BaseHTTPRequestHandler]:
    return functools.partial(QuietFileHandler, directory=directory)


class _TestServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        # The download limits under test hang up on slow or oversized bodies: a client gone mid-body is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _TestServerV6(_TestServer):
    address_family = socket.AF_INET6


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """Run ``handler`` on a free port of ``host`` (127.0.0.1 or ::1) in a thread, over TLS with the server context
    ``tls`` if given; yields the server's base URL."""
    server = (_TestServerV6 if ":" in host else _TestServer)((host, 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scheme = "https" if tls is not None else "http"
        yield f"{scheme}://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
