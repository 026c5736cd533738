"""The database's clock, which deadlines and retention are measured against."""

from datetime import datetime

from django.db import connection
from django.utils import timezone


def db_now() -> datetime:
    """PostgreSQL's now(): the start of the current transaction, if one is open, so every
    comparison in that transaction uses one instant, and app servers with skewed clocks
    agree.

    The embedded SQLite of the demo has no clock other than this process's (it is a file
    the process opens), so there the process clock is the database's.
    """
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]
