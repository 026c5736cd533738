"""A real HTTP receiver on 127.0.0.1 standing in for the bot: records requests, answers as told."""

import contextlib
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request as it arrived on the wire."""

    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """Answers `status` (or the next of `respond_with(...)`), optionally after `delay` s."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.delay = 0.0
        self.gate: threading.Event | None = None
        self._queued: deque[int] = deque()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    status = receiver._queued.popleft() if receiver._queued else receiver.status
                    gate = receiver.gate
                if gate is not None:
                    gate.wait(10)
                if receiver.delay:
                    time.sleep(receiver.delay)
                reply = b'{"ok":true}' if status < 300 else b"receiver says no"
                # The client may have given up already (timeout tests).
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/bot/webhook"

    def respond_with(self, *statuses: int) -> None:
        """Answer the next requests with these codes, then `status` again."""
        with self._lock:
            self._queued.extend(statuses)

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    def start(self) -> "Receiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()


def unused_port() -> int:
    """A port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
