"""Delivering one notification over one channel: the signed bot webhook or email."""

import hashlib
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import get_connection, send_mail
from django.core.serializers.json import DjangoJSONEncoder

from notifications import signing
from notifications.models import Channel, Notification

USER_AGENT = "escrow-backoffice-notifications/1"
# Enough of a refusal's body to tell "bad signature" from "down for maintenance".
ERROR_BODY_CHARS = 500


class DeliveryFailed(Exception):
    """The other side did not take the message (non-2xx, timeout, refused); retry later."""


def configuration_problem(channel: str) -> str | None:
    """Why `channel` cannot send right now, or None when it can.

    Checked before a row is claimed, so a missing setting leaves rows waiting (and
    counting no attempts) instead of burning their retries.
    """
    if channel == Channel.BOT_WEBHOOK:
        url = settings.NOTIFICATIONS_BOT_WEBHOOK_URL
        if not url:
            return "not sent: NOTIFICATIONS_BOT_WEBHOOK_URL is not set"
        if urlsplit(url).scheme not in ("http", "https"):
            return "not sent: NOTIFICATIONS_BOT_WEBHOOK_URL must be an http(s) URL"
        secret = settings.NOTIFICATIONS_BOT_WEBHOOK_SECRET
        if not secret:
            # Never unsigned: the bot must be able to tell our messages from anyone's.
            return "not sent: NOTIFICATIONS_BOT_WEBHOOK_SECRET is not set"
        try:
            signing.decode_secret(secret)
        except signing.InvalidSecret as exc:
            return f"not sent: NOTIFICATIONS_BOT_WEBHOOK_SECRET: {exc}"
        return None
    if channel == Channel.EMAIL:
        if not settings.NOTIFICATIONS_EMAIL_TO:
            return "not sent: NOTIFICATIONS_EMAIL_TO is not set"
        return None
    return f"not sent: unknown channel {channel!r}"


# --- bot webhook -----------------------------------------------------------------------


def message_id(notification: Notification) -> str:
    """The `webhook-id`: derived from the unique key, so every retry carries the same id.

    The bot dedupes on it; the key (not the pk) keeps it stable even if a row is ever
    re-created for the same event.
    """
    return "msg_" + hashlib.sha256(notification.key.encode()).hexdigest()[:32]


def webhook_body(notification: Notification) -> bytes:
    """The Standard Webhooks envelope: `type`, `timestamp` and our payload as `data`."""
    data: dict[str, Any] = {"recipient": notification.customer_id, **notification.payload}
    envelope = {
        "type": notification.event,
        "timestamp": notification.created_at.isoformat(),
        "data": data,
    }
    return json.dumps(envelope, cls=DjangoJSONEncoder, separators=(",", ":")).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not a delivery: report the 3xx instead of re-POSTing somewhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def send_bot_webhook(notification: Notification) -> None:
    """POST the signed envelope; only a 2xx counts as delivered."""
    body = webhook_body(notification)
    request = urllib.request.Request(
        settings.NOTIFICATIONS_BOT_WEBHOOK_URL,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signing.headers(
                secret=settings.NOTIFICATIONS_BOT_WEBHOOK_SECRET,
                msg_id=message_id(notification),
                # The real clock, whatever clock the dispatcher runs on: the bot checks it.
                timestamp=int(time.time()),
                body=body,
            ),
        },
    )
    try:
        with _opener.open(request, timeout=_timeout()) as response:
            response.read(ERROR_BODY_CHARS)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"bot webhook answered HTTP {exc.code}: {_error_body(exc)}") from exc
    except urllib.error.URLError as exc:
        raise DeliveryFailed(f"bot webhook unreachable: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        # Timeouts, resets and garbled responses after the connection was made.
        raise DeliveryFailed(f"bot webhook failed: {type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise DeliveryFailed(f"bot webhook answered HTTP {status}")


def _timeout() -> float:
    return settings.NOTIFICATIONS_TIMEOUT_SECONDS


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(ERROR_BODY_CHARS).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as read_exc:
        text = f"(body unreadable: {type(read_exc).__name__})"
    return " ".join(text.split()) or "(empty body)"


# --- email -----------------------------------------------------------------------------


def render_email(notification: Notification) -> tuple[str, str]:
    """A subject and plain-text body staff can read without knowing the payload format."""
    payload = notification.payload
    title = notification.event.replace("_", " ").capitalize()
    escrow_id = str(payload.get("escrow_id") or "")
    subject = f"[Escrow {escrow_id}] {title}" if escrow_id else f"[Escrow] {title}"
    lines = [f"{title} for escrow {escrow_id}." if escrow_id else f"{title}.", ""]
    recipient = payload.get("recipient", notification.customer_id)
    if recipient is not None:
        role = payload.get("role")
        lines.append(f"Recipient: {recipient}" + (f" ({role})" if role else ""))
    for name, value in payload.items():
        if name in ("event", "escrow_id", "recipient", "role"):
            continue
        lines.append(f"{name.replace('_', ' ').capitalize()}: {value}")
    queued = f"{notification.created_at:%Y-%m-%d %H:%M:%S %Z}"
    lines += ["", f"Notification {notification.key}, queued {queued}."]
    # Header injection is impossible anyway (Django refuses newlines), but a refused
    # subject would fail every retry; flatten it instead.
    return " ".join(subject.split()), "\n".join(lines) + "\n"


def send_email(notification: Notification) -> None:
    """Send through Django's email backend to the configured staff addresses."""
    subject, body = render_email(notification)
    try:
        count = send_mail(
            subject,
            body,
            settings.DEFAULT_FROM_EMAIL,
            list(settings.NOTIFICATIONS_EMAIL_TO),
            fail_silently=False,
            # SMTP waits forever by default; a hung server must fail like a hung bot.
            connection=get_connection(timeout=settings.EMAIL_TIMEOUT or _timeout()),
        )
    except OSError as exc:
        # smtplib.SMTPException is an OSError, as are refused connections and timeouts.
        raise DeliveryFailed(f"email failed: {type(exc).__name__}: {exc}") from exc
    if count != 1:
        raise DeliveryFailed(f"email backend reported {count} messages sent")


SENDERS: dict[str, Callable[[Notification], None]] = {
    Channel.BOT_WEBHOOK: send_bot_webhook,
    Channel.EMAIL: send_email,
}
