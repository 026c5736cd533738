"""The outbox: notifications written in the money transaction, delivered after commit."""

from django.db import models
from django.db.models import Q


class Channel(models.TextChoices):
    BOT_WEBHOOK = "bot_webhook", "Signed webhook to the bot"
    EMAIL = "email", "Email"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed (will retry)"
    DEAD = "dead", "Gave up"


class Notification(models.Model):
    """One message to one recipient about one event, unique by `key`.

    Written in the same transaction as the change it announces; sending it can fail and
    be retried, but never touches payment state. While a dispatcher is sending, the row
    keeps its status and `next_attempt_at` holds the end of that dispatcher's lease;
    `attempts` counts claims and fences late writers (see notifications.dispatch).
    """

    key = models.CharField(max_length=200, unique=True)
    event = models.CharField(max_length=64)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    customer = models.ForeignKey(
        "wallets.Customer", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    escrow = models.ForeignKey(
        "escrow.Escrow",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="notifications",
    )
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=NotificationStatus.values),
                name="notification_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(channel__in=Channel.values), name="notification_channel_valid"
            ),
            # A row that may still be sent has a time to be sent at, or no dispatcher
            # would ever pick it up.
            models.CheckConstraint(
                condition=Q(status__in=["sent", "dead"]) | Q(next_attempt_at__isnull=False),
                name="notification_due_has_next_attempt",
            ),
            models.CheckConstraint(
                condition=~Q(status="sent") | Q(sent_at__isnull=False),
                name="notification_sent_has_sent_at",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["pending", "failed"]),
                name="notification_due_idx",
            ),
            # The back-office outbox list (newest first), its status filter and its
            # "failing" queue (failed or dead).
            models.Index(fields=["created_at", "id"], name="notification_created_idx"),
            models.Index(fields=["status", "created_at", "id"], name="notification_status_idx"),
        ]

    def __str__(self) -> str:
        return self.key
