"""Pytest fixtures for real-HTTP provider tests: the DynoPay sandbox and a recording receiver.

Use them with `from payments.tests.sandbox_fixtures import dynopay_sandbox  # noqa: F401`
in a test module, or list this module in a conftest's `pytest_plugins`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from payments.sandbox import DynoPaySandbox, RetryPolicy

SANDBOX_API_KEY = "sandbox-test-api-key"
# Fast but still exponential, so retry tests take milliseconds.
TEST_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def dynopay_sandbox(settings: Any) -> Iterator[DynoPaySandbox]:
    """A started sandbox on a free port; DynoPayClient() talks to it by default.

    Webhooks are signed with the first DYNOPAY_WEBHOOK_SECRET; set `.webhook_url` (e.g. to
    live_server.url + "/webhooks/dynopay/") before marking payments with deliver=True.
    """
    secret = next(iter(settings.DYNOPAY_WEBHOOK_SECRET), "") or "sandbox-test-webhook-secret"
    sandbox = DynoPaySandbox(
        api_key=SANDBOX_API_KEY, webhook_secret=secret, retry=TEST_RETRY, webhook_timeout=5.0
    )
    settings.DYNOPAY_API_BASE_URL = sandbox.start()
    settings.DYNOPAY_API_KEY = SANDBOX_API_KEY
    settings.DYNOPAY_TIMEOUT_SECONDS = 5.0
    try:
        yield sandbox
    finally:
        sandbox.stop()


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A loopback HTTP server that records every request and answers scripted statuses.

    `statuses` are used in order and the last one repeats, so [500, 500, 200] fails twice
    and then accepts.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.statuses: list[int] = [200]
        self.response_body: dict[str, Any] = {"outcome": "applied"}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        ReceivedRequest("POST", self.path, dict(self.headers.items()), body)
                    )
                    index = min(len(receiver.requests), len(receiver.statuses)) - 1
                    status = receiver.statuses[index]
                    data = json.dumps({**receiver.response_body, "status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}/webhooks/dynopay/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A recording webhook endpoint on 127.0.0.1 (stands in for ours where it is not needed)."""
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()
