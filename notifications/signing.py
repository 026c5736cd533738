"""Standard Webhooks signatures for what we send to the bot (https://www.standardwebhooks.com)."""

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class InvalidSecret(ValueError):
    """The configured secret is not `whsec_<base64>` (or bare base64)."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key: base64 after an optional `whsec_` prefix, as the reference libraries do.

    A secret that is not base64 is refused rather than used as raw text, because the
    bot's Standard Webhooks library would decode it differently and reject everything.
    """
    body = secret.strip()
    if body.startswith(SECRET_PREFIX):
        body = body[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecret("the secret must be whsec_<base64>") from exc
    if not key:
        raise InvalidSecret("the secret is empty")
    return key


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a Standard Webhooks receiver verifies."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def verify(
    *, secret: str, headers: Mapping[str, str], body: bytes, now: int, tolerance: int = 300
) -> bool:
    """True if any `v1,` signature in the headers matches and the timestamp is fresh.

    For the receiving side (the bot, our tests); constant-time comparison.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get(ID_HEADER, "")
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    if not msg_id or abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body).encode()
    matched = False
    for candidate in lowered.get(SIGNATURE_HEADER, "").split():
        if hmac.compare_digest(candidate.encode(), expected):
            matched = True
    return matched
