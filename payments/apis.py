"""Webhook endpoint (placeholder until the processing path lands)."""

from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt


@method_decorator(csrf_exempt, name="dispatch")
class DynoPayWebhookApi(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError("webhook processing is being built")
