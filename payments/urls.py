"""Provider webhook routes."""

from django.urls import path

from payments.apis import DynoPayWebhookApi

app_name = "payments"
urlpatterns = [
    path("dynopay/", DynoPayWebhookApi.as_view(), name="dynopay-webhook"),
]
