"""notifications_dispatch as cron and an operator see it: output and exit codes."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from notifications.models import Notification, NotificationStatus
from notifications.tests.factories import enqueue

pytestmark = pytest.mark.django_db

S = NotificationStatus


def run(*args: str) -> tuple[int, str]:
    """(exit code, stdout) of the command."""
    out = StringIO()
    try:
        call_command("notifications_dispatch", *args, stdout=out, stderr=StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def test_nothing_due_exits_0(bot):
    assert run() == (0, "0 sent, 0 failed, 0 gave up\n")


def test_all_sent_exits_0_and_says_so(bot):
    enqueue()
    enqueue()
    code, out = run("--once")
    assert (code, out) == (0, "2 sent, 0 failed, 0 gave up\n")
    assert Notification.objects.filter(status=S.SENT).count() == 2


def test_a_failed_delivery_exits_1_names_the_row_and_keeps_going(bot):
    [failing] = enqueue()
    enqueue()
    bot.respond_with(500)
    code, out = run()
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"failed     #{failing.pk} {failing.key} (attempt 1): ")
    assert "HTTP 500" in lines[0] and "next try" in lines[0]
    assert lines[-1] == "1 sent, 1 failed, 0 gave up"


def test_json_output_reports_every_row(bot):
    [row] = enqueue()
    bot.respond_with(503)
    code, out = run("--json")
    assert code == 1
    data = json.loads(out)
    assert (data["sent"], data["failed"], data["dead"]) == (0, 1, 0)
    [item] = data["items"]
    assert item["id"] == row.pk and item["outcome"] == "failed" and "HTTP 503" in item["error"]
    assert item["next_attempt_at"]


def test_dry_run_lists_what_is_due_and_sends_and_writes_nothing(bot):
    [row] = enqueue()
    before = list(Notification.objects.values())
    code, out = run("--dry-run")
    assert code == 0
    assert out == f"would send #{row.pk} {row.key} (attempt 1)\n1 due\n"
    assert bot.requests == []
    assert list(Notification.objects.values()) == before


def test_rows_waiting_for_an_unconfigured_channel_exit_3(bot, settings):
    enqueue()
    settings.NOTIFICATIONS_BOT_WEBHOOK_URL = ""
    code, out = run()
    assert code == 3
    assert "1 waiting on bot_webhook (not sent: NOTIFICATIONS_BOT_WEBHOOK_URL is not set)" in out
    assert Notification.objects.get().status == S.PENDING


def test_verbosity_2_prints_each_row_and_0_prints_nothing(bot):
    [row] = enqueue()
    assert run("-v", "2") == (
        0,
        f"sent       #{row.pk} {row.key} (attempt 1)\n1 sent, 0 failed, 0 gave up\n",
    )
    enqueue()
    assert run("-v", "0") == (0, "")


def test_limit_caps_one_run(bot):
    for _ in range(3):
        enqueue()
    assert run("--limit", "2")[0] == 0
    assert Notification.objects.filter(status=S.SENT).count() == 2


def test_loop_delivers_what_arrives_between_passes(bot):
    enqueue()
    code, out = run("--loop", "--interval", "0.01", "--max-passes", "2", "--json")
    assert code == 0
    passes = [json.loads(line) for line in out.splitlines()]
    assert passes[0]["sent"] == 1
    assert Notification.objects.get().status == S.SENT


def test_bad_arguments_are_refused():
    with pytest.raises(CommandError, match="--loop: not allowed with argument --once"):
        call_command("notifications_dispatch", "--once", "--loop")
    with pytest.raises(CommandError, match="must be at least 1"):
        call_command("notifications_dispatch", "--limit", "0")
