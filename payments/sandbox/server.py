"""The sandbox's HTTP face: routes, authentication, request parsing, injected faults."""

from __future__ import annotations

import hmac
import json
import logging
import re
import urllib.parse
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from django.utils.dateparse import parse_datetime

from payments.client import PAYMENT_STATUSES
from wallets.money import USD, parse_decimal

if TYPE_CHECKING:
    from payments.sandbox.provider import DynoPaySandbox, _Fault

logger = logging.getLogger("payments.sandbox")

MAX_REQUEST_BYTES = 64 * 1024


class SandboxError(Exception):
    """A request the sandbox refuses: answered with `status` and a JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Tests restart sandboxes quickly; do not wait out TIME_WAIT.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        sandbox: DynoPaySandbox,
    ) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)


_PAYMENT = re.compile(r"^/v1/payments/(?P<id>[^/]+)$")
_EVENTS = re.compile(r"^/sandbox/payments/(?P<id>[^/]+)/events$")
_RESEND = re.compile(r"^/sandbox/payments/(?P<id>[^/]+)/resend$")


class _Handler(BaseHTTPRequestHandler):
    server: _SandboxHTTPServer
    server_version = "DynoPaySandbox/1.0"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        sandbox = self.server.sandbox
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        try:
            body = self._read_body()
            if path == "/health" and method == "GET":
                self._send(200, {"ok": True})
                return
            self._authenticate(sandbox)
            if path.startswith("/v1/"):
                fault = sandbox._take_fault()
                if fault is not None:
                    if sandbox.wait_or_stopped(fault.delay_seconds):
                        return
                    if fault.status is not None:
                        self._send_fault(fault)
                        return
            status, answer = self._route(sandbox, method, path, parts.query, body)
            self._send(status, answer)
        except SandboxError as exc:
            self._send(exc.status, {"error": exc.message})
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client went away during %s %s", method, self.path)
        except Exception as exc:
            # A sandbox bug: say so loudly to the caller rather than drop the connection.
            logger.exception("sandbox failed on %s %s", method, self.path)
            self._send(500, {"error": f"sandbox bug: {exc!r}"})

    def _route(
        self, sandbox: DynoPaySandbox, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if path == "/v1/payments" and method == "POST":
            data = _json(body)
            currency = str(data.get("currency") or USD).upper()
            if currency != USD:
                raise SandboxError(400, "currency must be USD")
            payment, new = sandbox.create_payment(
                ref_id=_text(data, "ref_id"),
                amount=_decimal(data, "amount"),
                coin=_text(data, "coin"),
                idempotency_key=self.headers.get("Idempotency-Key", ""),
            )
            return (201 if new else 200), payment.to_api_json()
        if path == "/v1/payments" and method == "GET":
            params = dict(urllib.parse.parse_qsl(query))
            status = params.get("status", "")
            if status and status not in PAYMENT_STATUSES:
                raise SandboxError(400, f"status must be one of {', '.join(PAYMENT_STATUSES)}")
            since = None
            if params.get("since"):
                since = parse_datetime(params["since"])
                if since is None or since.tzinfo is None:
                    raise SandboxError(400, "since must be an ISO 8601 time with a zone")
            payments = sandbox.list_payments(
                ref_id=params.get("ref_id", ""), status=status, since=since
            )
            return 200, {"payments": [p.to_api_json() for p in payments]}
        if (match := _PAYMENT.match(path)) and method == "GET":
            return 200, sandbox.get_payment(urllib.parse.unquote(match["id"])).to_api_json()
        if (match := _EVENTS.match(path)) and method == "POST":
            data = _json(body)
            payment, delivery = sandbox.mark_payment(
                urllib.parse.unquote(match["id"]),
                status=_text(data, "status"),
                base_amount=_decimal(data, "base_amount", required=False),
                paid_amount=_decimal(data, "paid_amount", required=False),
                coin=_text(data, "coin", required=False) or None,
                tx_id=_text(data, "txId", required=False) or None,
                deliver=_bool(data, "deliver", default=True),
            )
            return 200, {
                "payment": payment.to_api_json(),
                "webhook": delivery.to_json() if delivery else None,
            }
        if (match := _RESEND.match(path)) and method == "POST":
            delivery = sandbox.resend(urllib.parse.unquote(match["id"]))
            return 200, {"webhook": delivery.to_json()}
        if path == "/sandbox/deliveries" and method == "GET":
            return 200, {"deliveries": [d.to_json() for d in sandbox.deliveries]}
        if path == "/sandbox/faults" and method == "POST":
            data = _json(body)
            status = data.get("status")
            fault_body = data.get("body")
            count = data.get("count", 1)
            if (
                (status is not None and not isinstance(status, int))
                or (fault_body is not None and not isinstance(fault_body, str))
                or not isinstance(count, int)
            ):
                raise SandboxError(400, "status and count must be integers, body a string")
            pending = sandbox.add_fault(
                count=count,
                delay_seconds=float(_decimal(data, "delay_seconds", required=False) or 0),
                status=status,
                body=fault_body,
            )
            return 200, {"faults": pending}
        if path == "/sandbox/reset" and method == "POST":
            sandbox.reset()
            return 200, {"ok": True}
        raise SandboxError(404, f"no route {method} {path}")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise SandboxError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_REQUEST_BYTES:
            raise SandboxError(413, f"body over {MAX_REQUEST_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _authenticate(self, sandbox: DynoPaySandbox) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), sandbox.api_key.encode()
        ):
            raise SandboxError(401, "missing or invalid API key")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="dynopay-sandbox"')
        self.end_headers()
        self.wfile.write(data)

    def _send_fault(self, fault: _Fault) -> None:
        assert fault.status is not None
        if fault.body is None:
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "fault"
            data = json.dumps({"error": f"sandbox fault: {phrase}"}).encode()
            content_type = "application/json"
        else:
            data = fault.body.encode()
            content_type = "text/plain; charset=utf-8"
        self.send_response(fault.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}", parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SandboxError(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "body must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise SandboxError(400, f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise SandboxError(400, f"{name} must be a string")
    return value.strip()


def _decimal(data: dict[str, Any], name: str, *, required: bool = True) -> Decimal | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise SandboxError(400, f"{name} is required")
        return None
    try:
        return parse_decimal(value)
    except ValueError as exc:
        raise SandboxError(400, f"{name}: {exc}") from None


def _bool(data: dict[str, Any], name: str, *, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise SandboxError(400, f"{name} must be true or false")
    return value
