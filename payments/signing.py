"""DynoPay webhook signatures: lowercase hex HMAC-SHA256 of the raw body bytes."""

import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "X-DynoPay-Signature"


def sign(body: bytes, secret: str) -> str:
    """The signature DynoPay sends for `body` under `secret`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secrets: Iterable[str]) -> bool:
    """True if `signature` matches `body` under any configured secret (key rotation).

    Compares in constant time and checks every secret, so timing says nothing about
    which one (if any) matched. No secret configured means nothing verifies.
    """
    if not signature:
        return False
    presented = signature.strip().encode()
    matched = False
    for secret in secrets:
        if secret and hmac.compare_digest(sign(body, secret).encode(), presented):
            matched = True
    return matched
