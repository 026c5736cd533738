"""The webhook contract with no business in it, for `webhook_bench.py --floor`.

What every implementation of the issue's contract must do per delivery, and nothing
more: Django's full request cycle (the project's settings and middleware), the signature
check and JSON parsing, a receipt INSERT committed on its own, then one durable
transaction that locks the receipt, writes one effect row and marks its outcome (one
statement: the fewest round trips the contract allows), and a 200 only after that
commit. The same connection settings and prepared statements as the real hot path
(escrowsite.sqlbatch.hot_cursor). Never part of the project's URLs: gunicorn serves this
module only when the floor benchmark runs it.
"""

import json

import django

django.setup()

from django.conf import settings  # noqa: E402 - after setup, as a WSGI module must
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import transaction  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from escrowsite.sqlbatch import hot_cursor  # noqa: E402
from escrowsite.urls import urlpatterns as project_urls  # noqa: E402
from payments.signing import SIGNATURE_HEADER, verify  # noqa: E402

TABLES = """
CREATE TABLE floor_receipt (
    id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    body bytea NOT NULL,
    outcome text NOT NULL DEFAULT 'received'
);
CREATE TABLE floor_effect (
    id bigserial PRIMARY KEY,
    receipt_id bigint NOT NULL UNIQUE
        REFERENCES floor_receipt DEFERRABLE INITIALLY DEFERRED,
    event text NOT NULL
);
"""

PROCESS = """
WITH locked AS (SELECT id FROM floor_receipt WHERE id = %s FOR UPDATE),
     effect AS (INSERT INTO floor_effect (receipt_id, event) SELECT id, %s FROM locked
                RETURNING receipt_id)
UPDATE floor_receipt SET outcome = 'applied' FROM effect WHERE floor_receipt.id = effect.receipt_id
"""


@csrf_exempt
def floor_webhook(request: HttpRequest) -> JsonResponse:
    body = request.body
    if not verify(body, request.headers.get(SIGNATURE_HEADER), settings.DYNOPAY_WEBHOOK_SECRET):
        return JsonResponse({"outcome": "unauthenticated"}, status=401)
    event = json.loads(body)["event"]
    with hot_cursor() as cursor:  # autocommit: the receipt commits on its own
        cursor.execute("INSERT INTO floor_receipt (body) VALUES (%s) RETURNING id", [body])
        (receipt_id,) = cursor.fetchone()
    # Lock, effect and outcome in one statement: the fewest round trips the contract allows.
    with transaction.atomic(durable=True), hot_cursor() as cursor:
        cursor.execute(PROCESS, [receipt_id, event])
    return JsonResponse({"receipt": receipt_id, "outcome": "applied"})


urlpatterns = [path("webhooks/dynopay/", floor_webhook), *project_urls]
settings.ROOT_URLCONF = __name__
application = get_wsgi_application()
