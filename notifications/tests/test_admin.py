"""The outbox as staff see it in the admin."""

import pytest
from django.urls import reverse

from notifications.dispatch import dispatch_due
from notifications.models import Notification, NotificationStatus
from notifications.tests.factories import enqueue

pytestmark = pytest.mark.django_db


def test_staff_see_why_a_row_failed_and_can_retry_it(admin_client, bot_down, settings):
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 1
    [row] = enqueue()
    dispatch_due()
    url = reverse("admin:notifications_notification_changelist")

    page = admin_client.get(url, {"status__exact": "dead"})
    assert page.status_code == 200
    assert row.key in page.content.decode()
    detail = admin_client.get(reverse("admin:notifications_notification_change", args=[row.pk]))
    assert "refused" in detail.content.decode().lower()

    response = admin_client.post(
        url, {"action": "retry_now", "_selected_action": [row.pk]}, follow=True
    )
    assert "1 notification(s) queued for another try." in response.content.decode()
    row.refresh_from_db()
    assert row.status == NotificationStatus.PENDING and row.attempts == 0
    assert not Notification.objects.filter(status=NotificationStatus.DEAD).exists()
