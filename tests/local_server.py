"""Local HTTP servers for the tests that fetch images (no network beyond 127.0.0.1)."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer


class QuietFileHandler(SimpleHTTPRequestHandler):
    """Serves a folder's files without logging each request."""

    def log_message(self, *args) -> None:
        pass


def serving_files(directory: str) -> type[BaseHTTPRequestHandler]:
    return functools.partial(QuietFileHandler, directory=directory)


class _TestServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        # The download limits under test hang up on slow or oversized bodies: a client gone mid-body is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free port of 127.0.0.1 in a thread; yields the server's base URL."""
    server = _TestServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
