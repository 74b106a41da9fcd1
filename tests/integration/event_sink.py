"""A real HTTP receiver of CloudEvents for the jobs tests (K_SINK)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Sink:
    """A real HTTP receiver of CloudEvents; answers 503 to the first `fail_first` POSTs."""

    def __init__(self, fail_first: int = 0) -> None:
        received: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                event = json.loads(self.rfile.read(int(self.headers["content-length"])))
                ok = len(refused) >= fail_first
                (received if ok else refused).append(event)
                self.send_response(202 if ok else 503)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received, self.refused = received, refused
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int = 1, timeout: float = 60) -> float:
        """Seconds until `n` events were received."""
        start = time.monotonic()
        while len(self.received) < n:
            assert time.monotonic() - start < timeout, f"{len(self.received)} events"
            time.sleep(0.05)
        return time.monotonic() - start

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
