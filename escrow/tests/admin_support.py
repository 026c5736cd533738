"""Helpers for the back-office tests: staff users in their groups, pages, and messages."""

import importlib
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from escrow.models import Escrow
from payments.models import WebhookReceipt
from payments.tests.test_retry_command import failed_receipt
from payments.tests.test_webhook import incident_escrow
from payments.tests.webhooks import INCIDENT_TX

BUYER = 5590563715


def ensure_staff_groups() -> None:
    """Run the groups migration's (idempotent) function again.

    The test database is migrated once, but a `transaction=True` test anywhere in the suite
    ends with a flush that deletes all rows, the migration's groups included.
    """
    importlib.import_module("escrow.migrations.0005_staff_groups").create_groups(apps, None)
    importlib.import_module("escrow.migrations.0006_acknowledge_receipt_permission").grant(
        apps, None
    )


def staff_user(username: str, group: str | None = None, *, superuser: bool = False):
    if group:
        ensure_staff_groups()
    user = get_user_model().objects.create_user(
        username, password="pw", is_staff=True, is_superuser=superuser
    )
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def as_support() -> Client:
    return login(staff_user("sam-support", "Support"))


def as_finance(username: str = "fiona-finance") -> tuple[Client, Any]:
    user = staff_user(username, "Finance")
    return login(user), user


def as_superuser() -> Client:
    return login(staff_user("root", superuser=True))


def action_url(model: str, pk: int, name: str) -> str:
    return reverse(f"admin:{model}_action", args=[pk, name])


def change_url(model: str, pk: int) -> str:
    return reverse(f"admin:{model}_change", args=[pk])


def changelist_url(model: str) -> str:
    return reverse(f"admin:{model}_changelist")


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def incident_with_failed_delivery(monkeypatch) -> tuple[Escrow, WebhookReceipt]:
    """ES101325WZY2 as in the incident: $96.74 due, wallet $7.35, its $101.00 delivery failed."""
    escrow = incident_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, INCIDENT_TX)
    return escrow, receipt


ZERO = Decimal("0.00")
