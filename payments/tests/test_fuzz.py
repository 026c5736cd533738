"""Thousands of random, malformed and hostile deliveries: never a 500, never an effect from
a rejected one, never money from anything but a confirmed payment, always a balanced ledger."""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum
from django.test import Client
from hypothesis import example, given, settings
from hypothesis import strategies as st

from escrow.models import Escrow, EscrowHolding, EscrowStatus, StatusChange
from escrow.services import payment as escrow_payment_services
from escrow.tests.factories import escrow_in_status
from escrowsite.errors import ApplicationError
from notifications.models import Notification
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.signing import SIGNATURE_HEADER, sign
from payments.tests.test_webhook import assert_ledger_balanced
from payments.tests.webhooks import SECRET, URL, payload
from wallets.models import Account, Customer, Transaction, Transfer
from wallets.money import quantize_usd

# FUZZ_SCALE=10 for a deeper run than CI's (~20 s on two cores).
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))

# Everything a delivery can change apart from the receipt log itself.
EFFECT_MODELS = (
    Escrow,
    EscrowHolding,
    StatusChange,
    Account,
    Customer,
    Transfer,
    Transaction,
    Notification,
    PaymentEvent,
)
MONEY_OUTCOMES = {Outcome.APPLIED, Outcome.PARKED}
NO_EFFECT_OUTCOMES = {Outcome.RECORDED, Outcome.DUPLICATE}
ESCROW_STATUSES = [
    EscrowStatus.CREATED,
    EscrowStatus.PAYMENT_PENDING,
    EscrowStatus.PARTIALLY_PAID,
    EscrowStatus.PAYMENT_CONFIRMED,
    EscrowStatus.ACTIVE,
    EscrowStatus.DELIVERED,
    EscrowStatus.DISPUTED,
    EscrowStatus.COMPLETED,
    EscrowStatus.REFUNDED,
    EscrowStatus.CANCELLED,
    EscrowStatus.EXPIRED,
]


# --- building bodies -------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written verbatim: numbers Python cannot produce (1e400, 5000 digits)
    and the non-standard constants (NaN, Infinity)."""

    text: str


@dataclass(frozen=True)
class EscrowRef:
    """Stands for the id of the prepared escrow in `status`, filled in at run time."""

    status: str


def to_json(value: Any, refs: dict[str, str]) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, EscrowRef):
        return json.dumps(refs[value.status])
    if isinstance(value, dict):
        items = (f"{json.dumps(k)}: {to_json(v, refs)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v, refs) for v in value) + "]"
    return json.dumps(value)  # surrogates and NUL come out as \ud800 and \u0000 escapes


def render(delivery: bytes | Any, refs: dict[str, str]) -> bytes:
    """Raw bytes go out as they are; anything else is written as JSON."""
    return delivery if isinstance(delivery, bytes) else to_json(delivery, refs).encode()


RAW_NUMBERS = [
    "1e400", "-1e400", "1E-400", "1e12", "1e11", "999999999999.99", "999999999999.995",
    "0", "-0", "-0.0", "0.001", "0.004", "0.005", "0.01", "-5", "1" * 30, "1" * 4000,
    "1" * 5000, "12345678901234567890.123456789", "1e-99999", "0e99999", "0e-99999", "1e99999",
    "0.1e1", "96.74", "101.00", "101", "NaN", "Infinity", "-Infinity",
]  # fmt: skip
NASTY_TEXT = [
    "", " ", "\t", "null", "NaN", "nan", "sNaN", "Infinity", "-inf", "1e400", "-1e400",
    "1E+2", "1e-400", "1e-99999", "0e99999", "0e-99999", "0x10", "1_000", "1,000.00", "  12.50  ",
    "-5", "-0", "0", "0.00", "0.001", "0.005", "+7", "\u0661\u0660\u0661", "\x00", "12\x00",
    "12.00\x00", "\ud800", "a\udfffb", "\u202e101", "e\u0301", "\U0001f4b8", "\ufb03" * 6,
    "\u00df" * 9, "a" * 65, "a" * 300, "t" * 160, "9" * 5000, "ES101325WZY2",
    "payment.confirmed", "payment.refunded", "PAYMENT.CONFIRMED", "USD", "EUR", "LTC", "2025-13-45T99:99:99Z", "2025-10-13",
    "2025-10-13T14:11:40", "2025-10-13T14:11:40+99:00", "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00", "2025-10-13T14:11:40.123456789Z",
]  # fmt: skip

any_text = st.text(
    alphabet=st.characters(exclude_categories=()),
    max_size=20,  # surrogates included
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Raw(repr(f))),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: Raw(str(d))),
    st.sampled_from(RAW_NUMBERS).map(Raw),
    st.sampled_from(NASTY_TEXT),
    any_text,
    st.text(alphabet="0123456789-:TZ+. ", max_size=32),  # almost dates
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=5,
)
amounts = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("300"), places=2).map(str),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("300"), places=2).map(
        lambda d: Raw(str(d))
    ),
    st.sampled_from(["96.74", "95.74", "95.73", "101.00", "1e2", "0.005", " 50 ", "0.9187"]),
)
dates = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.just("2025-10-13T14:11:40Z"),
)
escrow_refs = st.sampled_from([EscrowRef(s) for s in ESCROW_STATUSES] + ["ES000000NOPE"])
# A small pool, so that deliveries within one example repeat an event (duplicates and
# conflicts), next to ids seen only once.
tx_ids = st.one_of(
    st.sampled_from(["tx-a", "tx-b", "6462e85a-12da"]),
    st.uuids().map(str),
    st.text(min_size=1, max_size=200),
)
GOOD_FIELDS = {
    "event": st.sampled_from(
        ["payment.confirmed"] * 6 + ["payment.pending", "payment.failed", " payment.confirmed"]
    ),
    "id": st.sampled_from(["pay_1", "pay_2"]) | st.text(min_size=1, max_size=20),
    "status": st.sampled_from(["confirmed", "pending", "failed"]),
    "txId": tx_ids,
    "paid_amount": amounts,
    "paid_currency": st.sampled_from(["LTC", "BTC", "usdt"]),
    "base_amount": amounts,
    "base_currency": st.sampled_from(["USD", "USD", "usd", " USD "]),
    "meta_data": st.fixed_dictionaries({"refId": escrow_refs}),
    "customer_reference": escrow_refs,
    "created_at": dates,
}


@st.composite
def payload_dicts(draw: st.DrawFn, *, hostile_one_in: int, missing_one_in: int) -> dict:
    """The provider's keys, each present or missing, with good or hostile values.

    Weights come from repetition inside sampled_from (one_of() merges repeated strategies),
    with the rare modes in the middle: Hypothesis favours the ends of the list.
    """
    good = ["good"] * (hostile_one_in * missing_one_in // 2)
    modes = good + ["hostile"] * missing_one_in + ["missing"] * hostile_one_in + good
    data: dict[str, Any] = {}
    for name, values in GOOD_FIELDS.items():
        # customer_reference is only the fallback reference: usually absent.
        mode = draw(st.sampled_from(["missing", "good"] if name == "customer_reference" else modes))
        if mode != "missing":
            data[name] = draw(json_values if mode == "hostile" else values)
    if draw(st.sampled_from([False] * 4 + [True])):
        data.update(draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3)))
    return data


hostile_deliveries = st.sampled_from(["payload"] * 4 + ["json"] * 2 + ["bytes"] * 2).flatmap(
    lambda kind: {
        "payload": payload_dicts(hostile_one_in=4, missing_one_in=10),
        "json": json_values,
        "bytes": st.binary(max_size=600),
    }[kind]
)
plausible_deliveries = payload_dicts(hostile_one_in=25, missing_one_in=40)


# --- running and checking --------------------------------------------------------------


def _fingerprint_sql() -> str:
    parts = []
    for model in EFFECT_MODELS:
        table = connection.ops.quote_name(model._meta.db_table)
        pk = model._meta.pk.column
        parts.append(
            f"SELECT '{model._meta.db_table}', count(*), coalesce(max(t.{pk}), 0), "
            f"md5(coalesce(string_agg(t::text, '|' ORDER BY t.{pk}), '')) FROM {table} t"
        )
    accounts = connection.ops.quote_name(Account._meta.db_table)
    parts.append(f"SELECT 'ledger total', 0, 0, coalesce(sum(balance), 0)::text FROM {accounts}")
    return " UNION ALL ".join(parts)


def fingerprint() -> dict[str, tuple]:
    """Every row of every table a delivery could change, hashed; and the ledger's total.

    One query per call: the fuzz tests take one after every delivery.
    """
    with connection.cursor() as cursor:
        cursor.execute(_fingerprint_sql())
        return {name: tuple(rest) for name, *rest in cursor.fetchall()}


@contextmanager
def rolled_back() -> Iterator[None]:
    """Undo one example's deliveries, so every example starts from the same escrows.

    A plain SQL savepoint, invisible to Django: an atomic() here would make the webhook
    path's atomic(durable=True) refuse to nest.
    """
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT fuzz_example")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK TO SAVEPOINT fuzz_example")
            cursor.execute("RELEASE SAVEPOINT fuzz_example")


def deliver(
    client: Client, body: bytes, headers: dict[str, str]
) -> tuple[int, dict, WebhookReceipt]:
    response = client.post(URL, data=body, content_type="application/json", headers=headers)
    receipt = WebhookReceipt.objects.order_by("-pk").first()
    try:
        data = response.json()
    except ValueError:
        data = {"unparsed": response.content[:300]}
    assert response.status_code != 500, (
        f"500 for body {body[:300]!r}: {receipt.last_error if receipt else data}"
    )
    return response.status_code, data, receipt


def base_amount_of(body: bytes) -> Decimal:
    """The USD amount the body states, read independently of the parser under test."""
    raw = json.loads(body, parse_float=Decimal, parse_int=Decimal)["base_amount"]
    return quantize_usd(Decimal(str(raw).strip()))


def check_signed_delivery(client: Client, body: bytes, before: dict) -> tuple[str, dict]:
    """Deliver one signed body and check what it did; returns its outcome and the state."""
    status, data, receipt = deliver(client, body, {SIGNATURE_HEADER: sign(body, SECRET)})

    assert status in (200, 400, 409), (status, data, body[:300])
    assert receipt.signature_valid
    assert data["outcome"] == receipt.outcome, (data, receipt.outcome)
    after = fingerprint()
    assert Decimal(after["ledger total"][2]) == 0, f"ledger out of balance after {body[:300]!r}"
    if status != 200 or receipt.outcome in NO_EFFECT_OUTCOMES:
        # A recorded event may add its dedupe row, and nothing else.
        ignored = "payments_paymentevent" if receipt.outcome == Outcome.RECORDED else None
        changed = [name for name in after if name != ignored and after[name] != before[name]]
        assert not changed, f"{status} {receipt.outcome} changed {changed}: {body[:300]!r}"
        return receipt.outcome, after
    assert receipt.outcome in MONEY_OUTCOMES, receipt.outcome
    assert receipt.event == "payment.confirmed", (
        f"money moved for a {receipt.event!r} event: {body[:300]!r}"
    )
    # What arrived from the provider is exactly the stated USD amount, once.
    arrived = Transfer.objects.filter(
        pk__gt=before["wallets_transfer"][1], debit_account__kind="provider_clearing"
    ).aggregate(s=Sum("amount"))["s"]
    assert arrived == base_amount_of(body), body[:300]
    return receipt.outcome, after


@pytest.fixture
def refs(db) -> dict[str, str]:
    """One escrow in every status, by status: what EscrowRef placeholders stand for."""
    return {status: escrow_in_status(status).escrow_id for status in ESCROW_STATUSES}


# A delivery that would be applied if it were signed: proof that 401 means "not processed".
VALID_PAYMENT = payload(
    escrow_id="placeholder", tx_id="tx-valid-but-unsigned", payment_id="pay_valid"
) | {"meta_data": {"refId": EscrowRef(EscrowStatus.PAYMENT_PENDING)}}


REDELIVERIES = ["none", "same", "changed"]
# Run first in every fuzz run, so that each ending is reached whatever the random draw.
SEED_EXAMPLES = [
    ([VALID_PAYMENT], "same"),  # applied, then a duplicate
    ([VALID_PAYMENT], "changed"),  # applied, then a conflict
    ([VALID_PAYMENT | {"meta_data": {"refId": "ES000000NOPE"}}], "none"),  # parked
    ([VALID_PAYMENT | {"event": "payment.pending"}], "none"),  # recorded
    ([b"not json"], "none"),  # malformed
]


def fuzz_signed(refs: dict[str, str], strategy, max_examples: int) -> dict[str, int]:
    client = Client(raise_request_exception=False)
    seen: dict[str, int] = {}

    @settings(max_examples=max(1, int(max_examples * SCALE)))
    @given(st.lists(strategy, min_size=1, max_size=3), st.sampled_from(REDELIVERIES))
    def run(batch: list, redelivery: str) -> None:
        first = batch[0]
        if redelivery == "same":  # a provider retrying a delivery it thinks was lost
            batch = [*batch, first]
        elif redelivery == "changed" and isinstance(first, dict):  # same event, new payload
            batch = [
                *batch,
                first | {"base_amount": "1.23" if first.get("base_amount") != "1.23" else "4.56"},
            ]
        bodies = [render(delivery, refs) for delivery in batch]
        with rolled_back():
            state = fingerprint()
            for body in bodies:
                outcome, state = check_signed_delivery(client, body, state)
                seen[outcome] = seen.get(outcome, 0) + 1

    for batch, redelivery in SEED_EXAMPLES:
        run = example(batch, redelivery)(run)
    run()
    assert_ledger_balanced()
    return seen


@pytest.mark.django_db
def test_random_and_malformed_signed_payloads_are_rejected_cleanly_never_500(refs):
    seen = fuzz_signed(refs, hostile_deliveries, max_examples=400)
    assert seen.get("malformed", 0) > sum(seen.values()) / 2, seen


@pytest.mark.django_db
def test_plausible_signed_payloads_move_exactly_the_confirmed_amount_or_nothing(refs):
    seen = fuzz_signed(refs, plausible_deliveries, max_examples=200)
    # The strategy reaches every ending, not only the rejections.
    for outcome in ("applied", "parked", "recorded", "duplicate", "conflict", "malformed"):
        assert seen.get(outcome), f"no delivery ended {outcome}: {seen}"


# --- unsigned and wrongly signed -------------------------------------------------------

# What a real HTTP header can carry once the server decoded it (latin-1, no controls).
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=100,
)


def wrong_signatures(body: bytes) -> st.SearchStrategy:
    right = sign(body, SECRET)
    flipped = st.integers(0, 63).map(
        lambda i: right[:i] + ("0" if right[i] != "0" else "1") + right[i + 1 :]
    )
    return st.one_of(
        st.none(),
        st.just(""),
        HEADER_TEXT,
        st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        st.text(min_size=1, max_size=30).map(lambda secret: sign(body, secret)),
        st.binary(min_size=1, max_size=20).map(lambda extra: sign(body + extra, SECRET)),
        flipped,
        st.integers(0, 63).map(lambda i: right[:i]),
        st.just(right + right),
        st.just("sha256=" + right),
    ).filter(lambda signature: signature is None or signature.strip() != right)


@pytest.mark.django_db
def test_unsigned_or_wrongly_signed_deliveries_are_401_and_never_processed(refs):
    client = Client(raise_request_exception=False)

    @settings(max_examples=max(1, int(300 * SCALE)))
    @given(st.data())
    def run(data) -> None:
        delivery = data.draw(st.one_of(st.just(VALID_PAYMENT), hostile_deliveries))
        body = render(delivery, refs)
        signature = data.draw(wrong_signatures(body))
        headers = {} if signature is None else {SIGNATURE_HEADER: signature}
        with rolled_back():
            before = fingerprint()
            status, answer, receipt = deliver(client, body, headers)
            assert status == 401, (status, answer, signature)
            assert answer["outcome"] == receipt.outcome == Outcome.UNAUTHENTICATED
            assert not receipt.signature_valid
            assert bytes(receipt.body) == body  # stored, so the attempt is visible
            assert receipt.event == receipt.tx_id == receipt.escrow_ref == ""
            assert fingerprint() == before

    run()


@pytest.mark.django_db
def test_the_payment_the_unsigned_fuzz_sends_would_be_applied_if_signed(refs):
    """Guards the test above: its valid body, signed, does move money."""
    body = render(VALID_PAYMENT, refs)
    outcome, _ = check_signed_delivery(Client(), body, fingerprint())
    assert outcome == "applied"


# --- inputs the fuzz once broke on, pinned --------------------------------------------


def _with(ref: str, **fields: Any) -> bytes:
    return json.dumps(payload(escrow_id=ref, **fields)).encode()


def _with_raw_base_amount(ref: str, token: bytes) -> bytes:
    return json.dumps(payload(escrow_id=ref))[:-1].encode() + b', "base_amount": ' + token + b"}"


# Each of these was a 500 that no retry could ever fix (fixed in 652732e, but for the
# last). Once that one passes, add "0e-99999" to RAW_NUMBERS and NASTY_TEXT too.
FOUND_BY_THE_FUZZ = [
    pytest.param(lambda ref: _with(ref, tx_id="tx-\ud800"), id="lone-surrogate-in-txId"),
    pytest.param(lambda ref: _with(ref + "\udfff"), id="lone-surrogate-in-refId"),
    pytest.param(lambda ref: _with(ref, payment_id="p\ud800"), id="lone-surrogate-in-id"),
    pytest.param(lambda ref: _with_raw_base_amount(ref, b"1" * 5000), id="5000-digit-integer"),
    pytest.param(lambda ref: _with(ref, tx_id="t" * 152, base_amount="10"), id="152-char-txId"),
    pytest.param(lambda ref: _with(ref, tx_id="t" * 200), id="200-char-txId"),
    pytest.param(lambda ref: _with(ref, coin="\ufb03" * 6), id="code-longer-once-uppercased"),
    pytest.param(lambda ref: _with(ref, paid_amount="1e-99999"), id="tiny-exponent"),
    pytest.param(lambda ref: _with(ref, paid_amount="0e99999"), id="zero-with-huge-exponent"),
    pytest.param(
        lambda ref: _with(ref, paid_amount="0e-99999"),
        id="zero-with-tiny-exponent",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize("make_body", FOUND_BY_THE_FUZZ)
def test_hostile_inputs_found_by_the_fuzz_get_a_final_answer_not_a_500(refs, make_body):
    body = make_body(refs[EscrowStatus.PAYMENT_PENDING])
    outcome, _ = check_signed_delivery(Client(raise_request_exception=False), body, fingerprint())
    assert outcome in ("malformed", "applied")


@pytest.mark.django_db
def test_a_refusal_after_the_money_was_posted_leaves_the_ledger_balanced(refs, monkeypatch):
    """Deferred system-account balance changes must roll back with the refusal savepoint."""
    client = Client(raise_request_exception=False)
    # The clearing account exists from an earlier payment, as it does in production.
    warm = render(payload(escrow_id=refs[EscrowStatus.CANCELLED], tx_id="tx-warm"), refs)
    assert check_signed_delivery(client, warm, fingerprint())[0] == "applied"

    def refuse(**kwargs: Any) -> None:
        raise ApplicationError("refused after the transfers were posted")

    monkeypatch.setattr(escrow_payment_services, "_record", refuse)
    body = render(payload(escrow_id=refs[EscrowStatus.PAYMENT_PENDING], tx_id="tx-no"), refs)
    outcome, _ = check_signed_delivery(client, body, fingerprint())
    assert outcome == "conflict"
