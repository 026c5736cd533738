"""The provider webhook endpoint: a thin view over payments.services.handle_delivery.

A plain Django view rather than DRF (as dj-stripe does): the signature is verified over
the raw body bytes, which must be read exactly once and never parsed before storage.
"""

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from payments.services import handle_delivery


@method_decorator(csrf_exempt, name="dispatch")
class DynoPayWebhookApi(View):
    """POST /webhooks/dynopay/ — 200 only once the outcome is committed."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> JsonResponse:
        cap = settings.WEBHOOK_MAX_BODY_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > cap:
            # Read no more than the cap: the stored prefix shows staff what it was.
            body = request.read(cap)
            response = handle_delivery(
                body=body, headers=dict(request.headers), remote_ip=_ip(request), body_size=declared
            )
        else:
            response = handle_delivery(
                body=request.body, headers=dict(request.headers), remote_ip=_ip(request)
            )
        return JsonResponse(response.body, status=response.status)


def _ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None
