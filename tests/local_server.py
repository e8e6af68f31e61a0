"""Local HTTP servers for the tests that fetch images (no network beyond 127.0.0.1)."""

from __future__ import annotations

import functools
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


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free port of 127.0.0.1 in a thread; yields the server's base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
