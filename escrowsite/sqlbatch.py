"""Many writes in one PostgreSQL statement, for the webhook hot path.

The hot path writes about fifteen rows per payment. Sent one ORM call at a time, each
cost a round trip plus the ORM's per-query overhead, which dominated the path. A
StatementBatch takes the same model instances the ORM would save and sends them as one
statement of data-modifying CTEs (`WITH w0 AS (INSERT ...), w1 AS (UPDATE ...) ...`).

Rules that keep this exact (payments/tests/test_hot_path.py compares every row with the
ORM path's):
- Rows go in with their primary keys already allocated (`allocate_ids`), so no part of
  the statement needs another's RETURNING. Column values come from each field's
  `pre_save` (which stamps `auto_now_add`), as in an ORM insert, and travel as one jsonb
  parameter per part, typed by PostgreSQL (`jsonb_populate_recordset`).
- A row inserted by the statement cannot be updated by it (all parts see one snapshot):
  an instance added with `insert` is serialised when the batch runs, so later changes to
  the instance are part of its INSERT, and `update_instance` leaves it alone.
- Each row is updated at most once per batch (PostgreSQL would apply only one of two
  updates of the same row in one statement): `update` merges into the earlier one.
- Foreign keys are DEFERRABLE INITIALLY DEFERRED (Django's PostgreSQL default), so the
  order of the parts does not matter; they are checked at COMMIT like any write.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import psycopg
from django.db import connection
from django.db.models import Field, JSONField, Model


def supported() -> bool:
    """Whether this database runs batches (PostgreSQL); other backends use the ORM path."""
    return connection.vendor == "postgresql"


def hot_cursor():
    """A cursor with server-side parameter binding, so psycopg prepares statements that
    repeat (after `prepare_threshold` runs) and PostgreSQL plans them once per
    connection. Wrapped like any Django cursor: execute_wrapper hooks and query logging
    see its statements."""
    # As Django's own cursor() does: a connection kept from an earlier request is checked
    # (CONN_HEALTH_CHECKS) before its first statement, here usually the receipt INSERT,
    # so a connection the server dropped is replaced instead of failing the delivery.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    # _prepare_cursor is how Django wraps its own cursors (thread check, query logging,
    # execute_wrapper hooks); the fault-injection and query-count tests rely on it.
    return connection._prepare_cursor(psycopg.Cursor(connection.connection))


def allocate_ids(model: type[Model], count: int) -> str:
    """SQL for an array of `count` fresh primary keys of `model` (for a SELECT list)."""
    table = model._meta.db_table
    column = model._meta.pk.column
    return (
        f"(SELECT array_agg(nextval(pg_get_serial_sequence('\"{table}\"', '{column}'))) "
        f"FROM generate_series(1, {int(count)}))"
    )


@dataclass(frozen=True)
class Add:
    """An update value that adds to the column (balance = balance + amount)."""

    amount: Decimal


class StatementBatch:
    """Inserts and updates of model instances, run together as one statement.

    Rows travel as one jsonb parameter per part and are turned into typed rows by
    PostgreSQL (jsonb_populate_recordset), so the statement text depends only on the
    batch's shape: psycopg caches and prepares it, PostgreSQL plans it once.
    """

    def __init__(self) -> None:
        self._inserts: list[tuple[type[Model], list[Model], bool]] = []
        self._pending: set[int] = set()
        self._updates: dict[tuple[type[Model], Any], dict[str, Any]] = {}

    def insert(self, objs: Sequence[Model], *, ignore_conflicts: bool = False) -> None:
        """Insert these instances (all of one model). They need their primary keys
        unless nothing refers to them (then all must be without one)."""
        if not objs:
            return
        model = type(objs[0])
        with_pk = {obj.pk is not None for obj in objs}
        if len(with_pk) != 1 or any(type(obj) is not model for obj in objs):
            raise ValueError(
                "a batch insert takes instances of one model, all with or all without primary keys"
            )
        self._inserts.append((model, list(objs), ignore_conflicts))
        self._pending.update(id(obj) for obj in objs)

    def is_pending_insert(self, obj: Model) -> bool:
        return id(obj) in self._pending

    def update(self, model: type[Model], pk: Any, **values: Any) -> None:
        """UPDATE one row by primary key; a value may be Add(amount). Field names or
        attnames. A second update of the same row is merged into the first (its fields
        must differ)."""
        fields = self._updates.setdefault((model, pk), {})
        columns = {model._meta.get_field(name).column: value for name, value in values.items()}
        clash = fields.keys() & columns.keys()
        if clash:
            raise ValueError(f"{model.__name__} #{pk}: {sorted(clash)} updated twice")
        fields.update(columns)

    def update_instance(self, obj: Model, fields: Iterable[str]) -> None:
        """Like obj.save(update_fields=fields); a pending insert already carries them."""
        if self.is_pending_insert(obj):
            return
        opts = obj._meta
        self.update(
            type(obj),
            obj.pk,
            **{name: getattr(obj, opts.get_field(name).attname) for name in fields},
        )

    def __bool__(self) -> bool:
        return bool(self._inserts or self._updates)

    def as_sql(self) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        # One INSERT per model (and kind of insert): fewer parts for PostgreSQL to set up,
        # and the same statement text whatever the number of rows.
        groups: dict[tuple[type[Model], bool, bool], list[Model]] = {}
        for model, objs, ignore in self._inserts:
            groups.setdefault((model, objs[0].pk is not None, ignore), []).extend(objs)
        for (model, with_pk, ignore), objs in groups.items():
            parts.append(_insert_sql(model, with_pk, ignore))
            params.append(_rows_json(_insert_fields(model, with_pk), objs))
        for (model, pk), columns in self._updates.items():
            added = tuple(sorted(c for c, v in columns.items() if isinstance(v, Add)))
            row = {model._meta.pk.column: pk} | {
                c: _json_value(v.amount if isinstance(v, Add) else v) for c, v in columns.items()
            }
            parts.append(_update_sql(model, tuple(sorted(columns)), added))
            params.append(json.dumps(row))
        if not parts:
            raise ValueError("an empty batch")
        ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(parts))
        return f"WITH {ctes} SELECT 1", params

    def execute(self) -> None:
        """Run every write in one statement, in the current transaction."""
        sql, params = self.as_sql()
        with hot_cursor() as cursor:
            cursor.execute(sql, params)


def insert_one(obj: Model) -> None:
    """INSERT one instance (no primary key yet) and set its primary key from RETURNING:
    one prepared statement and one round trip; outside a transaction it commits alone."""
    model = type(obj)
    fields = _insert_fields(model, False)
    with hot_cursor() as cursor:
        cursor.execute(
            _insert_sql(model, False, False) + f" RETURNING {_quote(model._meta.pk.column)}",
            [_rows_json(fields, [obj])],
        )
        obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = connection.alias


def select_for_update(model: type[Model], pk: Any, *, where: dict[str, Any] | None = None) -> Model:
    """The row with this primary key (or matching `where`, column: value) as an instance,
    locked (SELECT ... FOR UPDATE); raises model.DoesNotExist."""
    where = where or {model._meta.pk.column: pk}
    condition = " AND ".join(f"{_quote(column)} = %s" for column in where)
    (found,) = lock_rows([(model, condition, list(where.values()))])
    if found is None:
        raise model.DoesNotExist(f"{model.__name__} {pk or where} does not exist")
    return found


def lock_rows(specs: Sequence[tuple[type[Model], str, list[Any]]]) -> list[Model | None]:
    """Lock one row per (model, SQL condition, params) and return them as instances (None
    where no row matched): one prepared SELECT ... FOR UPDATE each, in the order given.

    Each statement starts after the one before it has its lock, so a condition may read
    what an earlier one locked (e.g. a reference stored on it)."""
    cursors = []
    # One after the other, not in psycopg's pipeline mode: measured, the pipeline's
    # client-side bookkeeping cost more CPU than the round trips it saved.
    rows = []
    for model, condition, params in specs:
        cursor = hot_cursor()
        cursor.execute(f"{_select_sql(model)} WHERE {condition} FOR UPDATE", params)
        cursors.append(cursor)
        rows.append(cursor.fetchone())
    for cursor in cursors:
        cursor.close()
    return [
        None if row is None else _instance(model, row)
        for (model, _, _), row in zip(specs, rows, strict=True)
    ]


@cache
def _select_sql(model: type[Model]) -> str:
    columns = ", ".join(_quote(f.column) for f in model._meta.concrete_fields)
    return f"SELECT {columns} FROM {_quote(model._meta.db_table)}"


def _instance(model: type[Model], row: Sequence[Any]) -> Model:
    fields = model._meta.concrete_fields
    values = [
        f.from_db_value(value, None, connection) if hasattr(f, "from_db_value") else value
        for f, value in zip(fields, row, strict=True)
    ]
    return model.from_db(connection.alias, [f.attname for f in fields], values)


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


@cache
def _insert_fields(model: type[Model], with_pk: bool) -> tuple[Field, ...]:
    return tuple(f for f in model._meta.concrete_fields if with_pk or not f.primary_key)


@cache
def _insert_sql(model: type[Model], with_pk: bool, ignore: bool) -> str:
    table = _quote(model._meta.db_table)
    columns = ", ".join(_quote(f.column) for f in _insert_fields(model, with_pk))
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT {columns} "
        f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)"
    )
    return sql + (" ON CONFLICT DO NOTHING" if ignore else "")


@cache
def _update_sql(model: type[Model], columns: tuple[str, ...], added: tuple[str, ...]) -> str:
    table = _quote(model._meta.db_table)
    pk = _quote(model._meta.pk.column)
    sets = ", ".join(
        f"{_quote(c)} = {table}.{_quote(c)} + r.{_quote(c)}"
        if c in added
        else f"{_quote(c)} = r.{_quote(c)}"
        for c in columns
    )
    # One row per UPDATE, through jsonb_populate_record (which the planner knows returns
    # one row): a primary-key index lookup, never a scan of the table.
    return (
        f"UPDATE {table} SET {sets} FROM jsonb_populate_record(NULL::{table}, %s::jsonb) AS r "
        f"WHERE {table}.{pk} = r.{pk}"
    )


def _rows_json(fields: tuple[Field, ...], objs: list[Model]) -> str:
    rows = []
    for obj in objs:
        row = {}
        for field in fields:
            # pre_save stamps auto_now_add fields, exactly as an ORM insert would.
            value = field.pre_save(obj, add=True)
            row[field.column] = value if isinstance(field, JSONField) else _json_value(value)
        rows.append(row)
    return json.dumps(rows)


def _json_value(value: Any) -> Any:
    # Text that PostgreSQL reads back exactly: numeric and timestamps as strings.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()  # bytea's hex input format
    raise TypeError(f"cannot put a {type(value).__name__} into a batch row")
