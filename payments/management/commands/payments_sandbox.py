"""Run the DynoPay sandbox on 127.0.0.1 so the local demo works without the real provider."""

import logging
import urllib.parse
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments.sandbox import DynoPaySandbox, RetryPolicy

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8000/webhooks/dynopay/"


def _default_port() -> int:
    # The client's default base URL names the port, so client and sandbox agree by default.
    return urllib.parse.urlsplit(settings.DYNOPAY_API_BASE_URL).port or 8765


class Command(BaseCommand):
    help = (
        "Serve the DynoPay sandbox (in-memory payments API plus signed webhooks) on "
        "127.0.0.1. The HTTP API is documented in payments/sandbox/__init__.py."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=None,
            help="Port (default: the port of DYNOPAY_API_BASE_URL, else 8765; 0 = any free).",
        )
        parser.add_argument(
            "--webhook-url",
            default=DEFAULT_WEBHOOK_URL,
            help=f"Where webhooks go (default {DEFAULT_WEBHOOK_URL}).",
        )
        parser.add_argument(
            "--secret",
            default=None,
            help="Webhook signing secret (default: the first of DYNOPAY_WEBHOOK_SECRET).",
        )
        parser.add_argument(
            "--api-key",
            default=None,
            help="API key clients must present as Bearer (default: DYNOPAY_API_KEY).",
        )
        parser.add_argument(
            "--max-attempts", type=int, default=5, help="Webhook attempts per event (default 5)."
        )
        parser.add_argument(
            "--retry-delay",
            type=float,
            default=1.0,
            help="First backoff delay in seconds, doubling each retry (default 1.0).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        api_key = options["api_key"] or settings.DYNOPAY_API_KEY
        if not api_key:
            raise CommandError("No API key: set DYNOPAY_API_KEY or pass --api-key.")
        secret = options["secret"] or next(iter(settings.DYNOPAY_WEBHOOK_SECRET), "")
        if not secret:
            raise CommandError("No webhook secret: set DYNOPAY_WEBHOOK_SECRET or pass --secret.")
        if options["max_attempts"] < 1 or options["retry_delay"] < 0:
            raise CommandError("--max-attempts must be >= 1 and --retry-delay >= 0.")
        port = options["port"] if options["port"] is not None else _default_port()
        sandbox = DynoPaySandbox(
            api_key=api_key,
            webhook_url=options["webhook_url"],
            webhook_secret=secret,
            port=port,
            retry=RetryPolicy(
                max_attempts=options["max_attempts"], initial_delay=options["retry_delay"]
            ),
        )
        try:
            url = sandbox.bind()
        except OSError as exc:
            raise CommandError(f"Cannot listen on 127.0.0.1:{port}: {exc}") from exc
        if options["verbosity"] >= 2:
            logging.getLogger("payments.sandbox").setLevel(logging.DEBUG)
        self.stdout.write(f"DynoPay sandbox on {url} -> webhooks to {options['webhook_url']}")
        self.stdout.write(
            f"Try: curl -H 'Authorization: Bearer <key>' {url}/v1/payments   (Ctrl-C to stop)"
        )
        try:
            sandbox.serve_forever()
        except KeyboardInterrupt:
            self.stdout.write("Stopping.")
        finally:
            sandbox.stop()
