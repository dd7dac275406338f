"""Mutation score of the core: mutmut mutates each module and runs the tests that cover it.

Run it through ``./scripts/mutation`` (which sets up the venv and the services first)::

    ./scripts/mutation                  every module in TARGETS
    ./scripts/mutation pure             the pure modules only
    ./scripts/mutation io               the I/O core only
    ./scripts/mutation cursor hub       modules by name (stem, path or dotted name)
    ./scripts/mutation hub:_write_loop  one module, narrowed to some of its functions

Each module runs in its own copy of the project under ``.mutation/<module>/`` with its own
``[tool.mutmut]`` section: ``only_mutate`` is the module, the test selection is the module's test
files. mutmut then runs, for each mutant, only the tests that called the mutated function in a
first, recorded run of those files. Results go to stdout (one line per module and group, the last
line the score) and into the "Mutation testing" section of ``docs/testing.md``.

Environment: ``MUTATION_JOBS`` (mutants tested at once, default 1), ``MUTATION_BACKENDS``
(``all``, the default, or ``sqlite``: skip the PostgreSQL and Redis cells of the I/O tests),
``MUTATION_BUDGET`` (seconds: stop there and report the mutants checked so far; mutmut tests the
mutants with the fastest tests first, so a partial result leans to those), ``MUTATION_FRESH``
(set: throw away the module's earlier verdicts; by default a rerun keeps the killed mutants of
unchanged functions, tests every survivor again and goes on with the unchecked ones).
The verdicts are also kept in ``scripts/mutation-verdicts/`` (committed): a new clone goes on
from there too.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
#: mutmut's verdicts per module, committed, so that a fresh clone goes on from the last run.
VERDICTS = ROOT / "scripts" / "mutation-verdicts"
DOC = ROOT / "docs" / "testing.md"
MUTMUT = ROOT / ".venv" / "bin" / "mutmut"


@dataclass(frozen=True)
class Target:
    """One module to mutate, the tests that may kill its mutants, and optionally which functions."""

    group: str
    path: str
    tests: tuple[str, ...]
    #: ``"Class.method"`` or ``"function"``; empty means every function of the module.
    functions: tuple[str, ...] = ()

    @property
    def dotted(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    @property
    def slug(self) -> str:
        return self.dotted.replace(".", "-")


#: What is mutated, and which test files may kill its mutants. A new pure module (a state
#: table, a parser, a schedule) or a new piece of the write and delivery path is added here.
TARGETS: tuple[Target, ...] = (
    Target("pure", "orders/workflow.py", ("tests/server/test_workflow.py",)),
    Target("pure", "orders/cursor.py", ("tests/server/test_cursor.py",)),
    Target("pure", "orders/payments.py", ("tests/server/test_payments.py",)),
    Target(
        "pure",
        "orders/schedule.py",
        ("tests/reconciler/test_schedule.py", "tests/reconciler/test_schedule_edges.py"),
    ),
    # Webhook signatures, and each gateway's payment and refund state table.
    Target(
        "pure",
        "gateways/signing.py",
        (
            "tests/gateways/test_signing_differential.py",
            "tests/gateways/test_stripe.py",
            "tests/gateways/test_webhook_events.py",
        ),
    ),
    Target(
        "pure",
        "gateways/stripe.py",
        (
            "tests/gateways/test_tables.py",
            "tests/gateways/test_stripe.py",
            "tests/gateways/test_webhook_events.py",
        ),
        functions=("intent_status", "refund_status", "StripeGateway.verify_webhook"),
    ),
    Target(
        "pure",
        "gateways/phonepe.py",
        (
            "tests/gateways/test_tables.py",
            "tests/gateways/test_phonepe.py",
            "tests/gateways/test_webhook_events.py",
        ),
        functions=(
            "v1_status",
            "v2_status",
            "v1_refund_status",
            "v2_refund_status",
            "x_verify",
            "callback_x_verify",
            "v2_callback_authorization",
            "PhonePeGateway.verify_webhook",
            "PhonePeGateway._verify_v1",
            "PhonePeGateway._verify_v2",
        ),
    ),
    Target(
        "pure",
        "gateways/sandbox.py",
        ("tests/gateways/test_tables.py",),
        functions=("sandbox_status", "sandbox_refund_status"),
    ),
    Target(
        "io",
        "orders/writes.py",
        (
            "tests/server/test_api_pos.py",
            "tests/server/test_api_orders.py",
            "tests/server/test_hub.py",
            "tests/server/test_durability.py",
            "tests/server/test_unknown_status.py",
            "tests/reconciler/test_relay.py",
        ),
    ),
    Target(
        "io",
        "orders/streams.py",
        (
            "tests/server/test_hub.py",
            "tests/server/test_hub_gaps.py",
            "tests/server/test_api_events.py",
            "tests/server/test_api_pos.py",
            "tests/server/test_prune.py",
            "tests/reconciler/test_relay.py",
            "tests/server/test_streams.py",
        ),
    ),
    Target(
        "io",
        "server/hub.py",
        (
            "tests/server/test_hub.py",
            "tests/server/test_hub_gaps.py",
            "tests/server/test_hub_delivery.py",
            "tests/server/test_ws_protocol.py",
            # A resume's check of the client's last event (a restored log reusing seqs).
            "tests/server/test_restore.py",
        ),
        # The delivery loop: hello/replay, backfill, a reset for a hole the log cannot fill, the
        # write loop, and the poller's pokes.
        functions=(
            "Hub._start",
            "Hub._place",
            "Hub._note_head",
            "Hub._backfill",
            "Hub._unfillable",
            "Hub._write_loop",
            "Hub.poll_heads",
            "_poke",
        ),
    ),
    Target(
        "io",
        "orders/groupcommit.py",
        (
            "tests/server/test_group_commit.py",
            "tests/server/test_api_pos.py",
            "tests/server/test_hub.py",
            "tests/server/test_commit_outcome.py",
        ),
    ),
    Target(
        "io",
        "channels/fanout.py",
        ("tests/channels/test_fanout.py", "tests/channels/test_contract.py"),
    ),
)

GROUPS = {"pure": "pure", "io": "I/O core"}
#: The score each group must reach, in percent.
GOALS = {"pure": 95.0, "io": 85.0}

# Reasons shared by several survivors.
_CODEC = 'equivalent: codec names are case-insensitive (`"UTF-8"` is the same codec).'
_SPLIT = (
    "equivalent: only an item's first two parts (name and value) are read, so how far past "
    "the second `=` it is split changes nothing."
)
_HEADER = "equivalent: `header()` looks the name up case-insensitively."
_ERRORS = (
    "equivalent: the error handler is consulted only for a character UTF-8 cannot encode (a "
    "lone surrogate), and a header value read from HTTP (Latin-1) never holds one."
)
_PHONEPE = "gateways.phonepe.xǁPhonePeGatewayǁ"
_CLOSE_REASON = (
    "equivalent: only the close frame's reason text changes; the close code (4408) is the "
    "contract and is what the tests check."
)
_REASON = (
    "equivalent: only the wording of the decision's `reason` changes, which is for the log "
    "and the audit row; the verdict and the status it moves to are unchanged."
)
_LIVE_RANK = (
    "equivalent: a live status ({}) shares its rank with no other status, and the same "
    "status was answered as SAME above, so `<` and `<=` never differ here."
)
_PARTITION = (
    "equivalent: a part with a second separator fails to parse on either side of it (`float`"
    " of the rest), so both refuse it"
)

#: Survivors judged equivalent (no test can tell them from the original), or left open, and
#: why. Keyed by mutmut's mutant name; a survivor not named here is listed as "not yet judged".
EQUIVALENT: dict[str, str] = {
    "gateways.signing.x_sign__mutmut_10": _CODEC,
    "gateways.signing.x_verify__mutmut_10": _CODEC,
    "gateways.signing.x_verify__mutmut_45": _CODEC,
    "gateways.signing.x_verify__mutmut_15": _SPLIT,
    "gateways.signing.x_verify__mutmut_18": _SPLIT,
    "gateways.signing.x_verify__mutmut_46": (
        "equivalent: `matched` is only tested for truth, and `None` is as false as `False`."
    ),
    "gateways.signing.x_verify__mutmut_5": (
        "open: `str.strip()` also strips Unicode whitespace, so a secret made only of, say, "
        "U+3000 would count as blank; no test says which is right (stripe-python does not "
        "check for a blank secret at all): for the gateways' owner to decide."
    ),
    "gateways.signing.x_verify__mutmut_6": (
        "equivalent for any real secret: stripping `X` as well only differs for a secret made "
        "of nothing but `X`s and whitespace."
    ),
    "gateways.stripe.xǁStripeGatewayǁverify_webhook__mutmut_16": _HEADER,
    "gateways.stripe.xǁStripeGatewayǁverify_webhook__mutmut_17": _HEADER,
    _PHONEPE + "_verify_v1__mutmut_13": _HEADER,
    _PHONEPE + "_verify_v1__mutmut_32": _ERRORS,
    _PHONEPE + "_verify_v1__mutmut_34": _CODEC,
    _PHONEPE + "_verify_v1__mutmut_35": _ERRORS,
    _PHONEPE + "_verify_v1__mutmut_36": _ERRORS,
    _PHONEPE + "_verify_v1__mutmut_88": (
        "equivalent: the placeholder for a missing transaction id only has to give the same "
        "dedupe key for the same callback, and `XXXX` does."
    ),
    _PHONEPE + "_verify_v1__mutmut_90": (
        "equivalent: a callback without a code has no type to name; the placeholder is only "
        "logged and stored."
    ),
    _PHONEPE + "_verify_v2__mutmut_12": _HEADER,
    _PHONEPE + "_verify_v2__mutmut_13": _HEADER,
    _PHONEPE + "_verify_v2__mutmut_14": (
        'equivalent: a missing Authorization compared as `XXXX` instead of `""` fails the '
        "comparison all the same."
    ),
    _PHONEPE + "_verify_v2__mutmut_28": _ERRORS,
    _PHONEPE + "_verify_v2__mutmut_30": _CODEC,
    _PHONEPE + "_verify_v2__mutmut_31": _ERRORS,
    _PHONEPE + "_verify_v2__mutmut_32": _ERRORS,
    "orders.payments.x_decide_payment__mutmut_44": _LIVE_RANK.format("INITIATED, PENDING"),
    "orders.payments.x_decide_payment__mutmut_57": _REASON,
    "orders.payments.x_decide_payment__mutmut_58": _REASON,
    "orders.payments.x_decide_refund__mutmut_34": _REASON,
    "orders.payments.x_decide_refund__mutmut_35": _REASON,
    "orders.payments.x_decide_refund__mutmut_36": _REASON,
    "orders.payments.x_decide_refund__mutmut_43": _REASON,
    "orders.payments.x_decide_refund__mutmut_44": _REASON,
    "orders.payments.x_decide_refund__mutmut_45": _REASON,
    "orders.payments.x_decide_refund__mutmut_46": _LIVE_RANK.format("REQUESTED, PENDING"),
    "orders.payments.x_decide_refund__mutmut_59": _REASON,
    "orders.payments.x_decide_refund__mutmut_60": _REASON,
    "orders.schedule.x__step__mutmut_3": _PARTITION + " (`3x30x5`).",
    "orders.schedule.xǁScheduleǁparse__mutmut_5": _PARTITION
    + ": a key with a second `=` is unknown either way.",
    "orders.schedule.xǁScheduleǁparse__mutmut_48": _PARTITION + " (`tail=1x2,3,4`).",
    "orders.schedule.xǁScheduleǁparse__mutmut_15": (
        "near-equivalent: `first=A-B` split at the last `-` differs only for a number written "
        "with a negative exponent (`first=1e-5-2`), which the code refuses and the mutant reads."
    ),
    "orders.schedule.x_backoff__mutmut_19": (
        "equivalent: 2^62 or 2^63 times the base is above any cap (300 s by default) either way."
    ),
    _PHONEPE + "_verify_v2__mutmut_50": (
        "equivalent: a callback naming neither `event` nor `type` has no type; the placeholder "
        "only changes the (still deterministic) dedupe key and the log."
    ),
}

# The I/O core's survivors, one dict per module so that work on one module never touches
# another's. The mutants are named by their place in the function: after a function changes, a
# name may denote a different change, so re-read each diff before keeping its reason.
_OVERFLOW_LOG = (
    "equivalent: `_overflowing` only keeps the queue-full warning to once per burst; what is "
    "queued, published or left to the relay does not read it."
)
_EQ_WRITES: dict[str, str] = {
    "orders.writes.xǁActorǁsystem__mutmut_11": (
        "equivalent: `principal` is the dataclass's last field and defaults to None, so leaving "
        "the `None` out builds the same actor."
    ),
    "orders.writes.x_change_order_status__mutmut_77": (
        "equivalent: `>= 1` also rebuilds the answer when `within` added no event of its own; it "
        "returned the order it was handed and the payment rows are read in the same transaction, "
        "so the rebuilt snapshot is the event's and `tuple(more)` the same deliveries."
    ),
    "orders.writes.x_change_order_status__mutmut_107": (
        "equivalent: no caller reads a status change's `Written.deliveries` (Refunds.change_status "
        "passes it on unread); the publish above used the deliveries themselves."
    ),
    "orders.writes.x_check_move__mutmut_18": (
        "equivalent: only the wording of the 409's human message changes; its code, status and "
        "allowed list are pinned by tests/server/test_unknown_status.py."
    ),
    "orders.writes.x_check_move__mutmut_19": (
        "equivalent: only the wording of the 409's human message changes; its code, status and "
        "allowed list are pinned by tests/server/test_unknown_status.py."
    ),
    "orders.writes.x_append_event__mutmut_39": (
        'equivalent: the draft\'s id is never written (`del values["id"]`) and the event is '
        "replaced with the id the INSERT returned, so 0 or 1 there changes nothing."
    ),
    "orders.writes.xǁPublisherǁ__init____mutmut_1": (
        "equivalent: the pause between two marking UPDATEs only changes how soon `published_at` "
        "is written, never whether (the relay's grace is far longer); no test may time it."
    ),
    "orders.writes.xǁPublisherǁ__init____mutmut_2": (
        "equivalent: the app always passes `publish_queue_size`; the default only bounds a "
        "publisher built by a tool or a test, none of which queues 10,000 events."
    ),
    "orders.writes.xǁPublisherǁ__init____mutmut_20": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁ__init____mutmut_21": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁpublish__mutmut_8": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁpublish__mutmut_9": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁpublish__mutmut_10": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁ_send_batch__mutmut_8": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁ_send_batch__mutmut_9": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁ_send_batch__mutmut_10": _OVERFLOW_LOG,
    "orders.writes.xǁPublisherǁ_send_batch__mutmut_4": (
        "equivalent: a batch takes whole queue items, so its size varies anyway; one delivery "
        "more in a round trip reaches the subscribers as the same messages in the same order."
    ),
    "orders.writes.xǁPublisherǁ__init____mutmut_3": (
        "equivalent: the default shutdown drain bound only changes how long a stalled broker "
        "holds up shutdown, not what is left to the relay (pinned with a bound of its own in "
        "tests/reconciler/test_relay.py)."
    ),
}
_GC = "orders.groupcommit.xǁGroupCommitǁ"
_GC_DEFAULT = (
    "equivalent: a default no caller uses — the app passes max_batch, max_queued and lanes "
    "from the settings, and the tests construct it with all three."
)
_GC_SHUTDOWN_TEXT = (
    "equivalent: only the wording of the shutdown refusal's message changes; the 503, its "
    "`overloaded` code and Retry-After are what the tests check."
)
_GC_STRICT = (
    "equivalent: `_run` returns exactly one outcome per change it was given (one per change "
    "in `apply_changes`, one appended per change when applied one by one), so a strict zip "
    "never finds lengths that differ."
)
_GC_CLEANUP = (
    "equivalent: the worker leaves its loop only with its queue empty, and while it is the "
    "lane's registered worker the lane's queue is its own; an empty deque left in `_queues` "
    "is simply reused by the next change of the lane (`setdefault`), so nothing differs."
)
_GC_INVALIDATE = (
    "near-equivalent: with the explicit invalidate skipped, the transaction's rollback on the "
    "dead connection fails and SQLAlchemy discards the connection itself; the connection-lost "
    "test (whose retry needs a live connection) passes with this mutant applied by hand."
)
_GC_NOT_COMMITTED = (
    "equivalent: `_NotCommitted` never leaves the module and its own message is never read — "
    "`_run` catches it and raises or returns its `cause`."
)
_GC_STATEMENT_TEXT = (
    "equivalent: a StatementFailed's message only reaches the log; the answer is the fixed "
    "503 `database_unavailable` (`handle_database_error`), which the tests check."
)
_GC_ITEMS = (
    "equivalent: the branch is never taken — SQLAlchemy's asyncpg dialect registers the "
    "engine's json_deserializer as the json codec, so `items` arrives decoded (`_read__mutmut_29`"
    " and `_30`, which would make `OrderRow(**values)` raise if it ran, survive too)."
)
_EQ_GROUPCOMMIT: dict[str, str] = {
    **{f"orders.groupcommit.x__read__mutmut_{n}": _GC_ITEMS for n in range(28, 34)},
    "orders.groupcommit.x_apply_changes__mutmut_4": (
        "equivalent: `seqs` is read only for the applied changes, and when there is one "
        "`_write` has replaced the initial value."
    ),
    "orders.groupcommit.x__read__mutmut_53": _GC_STATEMENT_TEXT,
    "orders.groupcommit.x__read__mutmut_54": _GC_STATEMENT_TEXT,
    "orders.groupcommit.x__write__mutmut_73": _GC_STATEMENT_TEXT,
    "orders.groupcommit.x__write__mutmut_74": _GC_STATEMENT_TEXT,
    "orders.groupcommit.xǁ_NotCommittedǁ__init____mutmut_1": _GC_NOT_COMMITTED,
    "orders.groupcommit.xǁ_NotCommittedǁ__init____mutmut_2": _GC_NOT_COMMITTED,
    _GC + "__init____mutmut_1": _GC_DEFAULT,
    _GC + "__init____mutmut_2": _GC_DEFAULT,
    _GC + "__init____mutmut_3": _GC_DEFAULT,
    _GC + "_queue__mutmut_18": "equivalent: only the worker task's name (for debugging) changes.",
    _GC + "_queue__mutmut_20": "equivalent: only the worker task's name (for debugging) changes.",
    _GC + "close__mutmut_7": _GC_SHUTDOWN_TEXT,
    _GC + "close__mutmut_8": _GC_SHUTDOWN_TEXT,
    _GC + "_drain__mutmut_17": _GC_SHUTDOWN_TEXT,
    _GC + "_drain__mutmut_18": _GC_SHUTDOWN_TEXT,
    _GC + "_drain__mutmut_24": _GC_STRICT,
    _GC + "_drain__mutmut_27": _GC_STRICT,
    _GC + "_drain__mutmut_28": _GC_STRICT,
    _GC + "_drain__mutmut_33": _GC_CLEANUP,
    _GC + "_drain__mutmut_34": _GC_CLEANUP,
    _GC + "_drain__mutmut_35": _GC_CLEANUP,
    _GC + "_drain__mutmut_36": _GC_CLEANUP,
    _GC + "change_status__mutmut_28": (
        "equivalent: a principal has a store_id exactly when it is a POS terminal (auth refuses "
        "a POS token without one and gives other roles none), so `or` and `and` between the "
        "role test and the store test decide alike."
    ),
    "orders.groupcommit.x__event__mutmut_3": (
        "equivalent: the summary reads the status only to owe nothing on a CANCELLED or EXPIRED "
        "order, and neither comes here (the POS may not expire an order; cancels take the "
        "refunding path, `Refunds.change_status`)."
    ),
    "orders.groupcommit.x__read__mutmut_49": _GC_INVALIDATE,
    "orders.groupcommit.x__write__mutmut_69": _GC_INVALIDATE,
    "orders.groupcommit.x__failed__mutmut_1": (
        "equivalent: `conn.invalidate()` of a connection whose driver is closed does not raise "
        "(the connection-lost test passes with this mutant applied by hand), so the suppress "
        "never has anything to catch."
    ),
}
_ST = "orders.streams.x_"
_ST_SQL_CASE = (
    "equivalent: only the case of SQL keywords and unquoted identifiers changes, which both "
    "PostgreSQL (folding them to lower case) and SQLite read the same."
)
_ST_NO_SEQ_ZERO = (
    "equivalent: seq 0 is the position before a stream's first event (seqs start at 1), so no "
    "row is ever there and asking for it finds nothing either way."
)
_ST_OVERLAP = (
    "equivalent: chunks of 501 at steps of 500 overlap by one name, which is read (or inserted "
    "and skipped on conflict) twice with the same outcome."
)
_ST_STEP_ONE = (
    "equivalent: a step of 1 instead of 500 starts a 500-name chunk at every name, so every "
    "name is still covered, the overlaps read again or skipped on conflict: the same outcome "
    "in many more statements."
)
_ST_ON_CONFLICT_ANY = (
    "equivalent: `ON CONFLICT DO NOTHING` without a target skips any unique violation, and the "
    "streams table has one unique key only, its primary key `name`."
)
_EQ_STREAMS: dict[str, str] = {
    _ST + "_append_statements__mutmut_10": _ST_SQL_CASE,
    _ST + "_append_statements__mutmut_11": _ST_SQL_CASE,
    _ST + "_append_statements__mutmut_13": _ST_SQL_CASE,
    _ST + "_upsert_sql__mutmut_6": _ST_SQL_CASE,
    _ST + "_upsert_sql__mutmut_7": _ST_SQL_CASE,
    _ST + "_upsert_sql__mutmut_9": _ST_SQL_CASE,
    _ST + "_upsert_sql__mutmut_10": _ST_SQL_CASE
    + " (The CTE's columns are read back lower case on PostgreSQL, by position on SQLite.)",
    _ST + "_insert__mutmut_2": (
        "equivalent: PostgreSQL's `Insert` compiles to the same `INSERT ... ON CONFLICT (name) "
        "DO NOTHING` on SQLite (SQLite's on PostgreSQL does not, and that mutant is killed)."
    ),
    _ST + "append_to_streams__mutmut_2": (
        "equivalent: a missed statement cache builds the same statements for this call."
    ),
    _ST + "append_to_streams__mutmut_14": (
        "equivalent: PostgreSQL takes SQLite's two statements (upsert, then the positions), "
        "plain SQL it speaks as well: the same seqs, rows and row locks held to commit, one "
        "round trip more."
    ),
    _ST + "append_to_streams__mutmut_15": "equivalent: as `append_to_streams__mutmut_14`.",
    _ST + "ensure_stream__mutmut_1": (
        "equivalent: without the first read every call inserts with `ON CONFLICT DO NOTHING`, "
        "which leaves an existing stream as it is, and the read after it returns the same head."
    ),
    _ST + "ensure_stream__mutmut_3": (
        "equivalent: the first read looks for `name IS NULL`, finds nothing, and the call goes "
        "the way of `ensure_stream__mutmut_1`."
    ),
    _ST + "ensure_stream__mutmut_10": _ST_ON_CONFLICT_ANY,
    _ST + "ensure_stream__mutmut_16": (
        "equivalent: `head_seq` left out takes its column default, 0."
    ),
    _ST + "ensure_stream__mutmut_18": (
        "equivalent: `pruned_seq` left out takes its column default, 0."
    ),
    _ST + "ensure_streams__mutmut_16": _ST_ON_CONFLICT_ANY,
    _ST + "ensure_streams__mutmut_12": _ST_STEP_ONE,
    _ST + "ensure_streams__mutmut_30": _ST_OVERLAP,
    _ST + "event_ids_at__mutmut_11": _ST_STEP_ONE,
    _ST + "read_heads__mutmut_9": _ST_STEP_ONE,
    _ST + "event_id_at__mutmut_1": _ST_NO_SEQ_ZERO,
    _ST + "event_ids_at__mutmut_3": _ST_NO_SEQ_ZERO,
    _ST + "event_ids_at__mutmut_29": _ST_OVERLAP,
    _ST + "read_heads__mutmut_14": _ST_OVERLAP,
    _ST + "open_orders_of__mutmut_18": (
        "equivalent: the kind's label is only ever compared with `customer`, so any other "
        "label for a store stream means the store column all the same."
    ),
    _ST + "open_orders_of__mutmut_19": "equivalent: as `open_orders_of__mutmut_18`.",
    _ST + "open_orders_of__mutmut_21": (
        "equivalent: with a limit of 0 the query runs and ranks nothing at or below 0, so every "
        "stream's list stays empty, as the early return leaves it."
    ),
    _ST + "open_orders_of__mutmut_24": (
        "equivalent: `break` for `continue` on a kind with no keys, which cannot happen: a kind "
        "is only added with a key."
    ),
    _ST + "prune__mutmut_2": (
        "equivalent: the default chunk only sets how many events each round takes; the batch's "
        "oldest events by id go either way, and each stream's final cut is the same."
    ),
    _ST + "prune__mutmut_5": (
        "equivalent: once the batch is full the extra round asks for `LIMIT 0`, finds nothing "
        "and stops, as the loop's own condition would."
    ),
    _ST + "prune__mutmut_43": (
        "equivalent: raising `pruned_seq` when it already equals the cut writes the same value."
    ),
}
_HUB = "server.hub.xǁHubǁ"
_LOGGED = (
    "equivalent: a resume's `problem` is only logged (the reset is sent for any problem), so "
    "its wording, or which of two problems is named, changes nothing a client or a counter sees."
)
_RECHECK = (
    "equivalent: the second read is of a stream just created at seq 0, where the last-event "
    "check cannot matter: it is only asked for with `since > 0`, which is past the head and a "
    "reset (`ahead`) whatever the check finds."
)
_EQ_HUB: dict[str, str] = {
    _HUB + "_backfill__mutmut_65": (
        "equivalent: a page of exactly 500 makes one more read, which finds nothing (or the "
        "events committed since, which the live messages would bring in the same order)."
    ),
    _HUB + "_write_loop__mutmut_11": _CLOSE_REASON,
    _HUB + "_write_loop__mutmut_12": _CLOSE_REASON,
    _HUB + "_write_loop__mutmut_13": _CLOSE_REASON,
    _HUB + "_write_loop__mutmut_22": (
        "equivalent: `>=` only rewrites the same value into the remembered head."
    ),
    _HUB + "_write_loop__mutmut_56": (
        "equivalent: only the close frame's reason text changes; the close code (1011) is the "
        "contract and is what the tests check."
    ),
    _HUB + "_write_loop__mutmut_57": (
        "equivalent: only the close frame's reason text changes; the close code (1011) is the "
        "contract and is what the tests check."
    ),
    _HUB + "_note_head__mutmut_1": (
        "equivalent: `>=` only rewrites the same value into the remembered head."
    ),
    _HUB + "_note_head__mutmut_2": (
        "open: the remembered head would go back when a database read older than a relayed "
        "live message is noted after it. Every reader that notes a head sees the live message "
        "itself next (it was subscribed first) and moves the head forward again, so only a pong "
        "answered from memory in between could show it; that needs a pause point between a "
        "head read and its note (there is none) and a socket of the stream kept from its queue."
    ),
    _HUB + "_start__mutmut_20": (
        "equivalent: checking the event at seq 0 as well finds none there (seqs start at 1), "
        "so the answer is the same; it only asks the shared read for that id."
    ),
    _HUB + "_start__mutmut_35": _RECHECK,
    _HUB + "_start__mutmut_38": _RECHECK,
    _HUB + "_start__mutmut_47": _LOGGED,
    _HUB + "_start__mutmut_52": _LOGGED,
    _HUB + "_start__mutmut_53": _LOGGED,
    "server.hub.xǁHubǁpoll_heads__mutmut_41": (
        "open: `break` for `continue` at a socket still setting up skips the sockets of its "
        "stream that come after it in a set, whose order is the objects' hashes: a test with "
        "one socket setting up and one behind kills it on about half the runs. Deterministic "
        "would need the sockets of a stream in a known order (a list, or sorted by id)."
    ),
    "server.hub.xǁHubǁpoll_heads__mutmut_63": (
        "equivalent: a pause of 1 s instead of a bare yield between slices of 500 streams "
        "changes only when the poll returns, not what it pokes or counts."
    ),
}
_EQ_FANOUT: dict[str, str] = {
    "channels.fanout.xǁFanoutǁremove__mutmut_8": (
        "equivalent: `break` for `continue` on a channel with no entry, which cannot happen: "
        "every channel of a registered subscription has one until that subscription leaves."
    ),
}
EQUIVALENT.update(_EQ_WRITES)
EQUIVALENT.update(_EQ_GROUPCOMMIT)
EQUIVALENT.update(_EQ_STREAMS)
EQUIVALENT.update(_EQ_HUB)
EQUIVALENT.update(_EQ_FANOUT)

# mutmut's statuses: which count as killed, which as survived; the rest are left out of N.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests", "suspicious"}


@dataclass
class Result:
    """What mutmut made of one target's mutants."""

    target: Target
    statuses: dict[str, str]
    diffs: dict[str, str]
    seconds: float
    #: It went on from earlier verdicts: its time adds to the time recorded for the module.
    resumed: bool = False

    @property
    def killed(self) -> int:
        return sum(1 for s in self.statuses.values() if s in KILLED)

    @property
    def total(self) -> int:
        return sum(1 for s in self.statuses.values() if s in KILLED | SURVIVED)

    @property
    def unchecked(self) -> int:
        """Mutants left untested because the time budget ran out."""
        return sum(1 for s in self.statuses.values() if s not in KILLED | SURVIVED | {"skipped"})

    @property
    def survivors(self) -> list[str]:
        return sorted(n for n, s in self.statuses.items() if s in SURVIVED)


def percent(killed: int, total: int) -> float:
    return 100.0 * killed / total if total else 0.0


def score(killed: int, total: int) -> str:
    """``P %``, or a dash when no mutant was checked."""
    return f"{percent(killed, total):.1f} %" if total else "–"


def select(names: list[str]) -> list[Target]:
    """The targets named by group, stem, path or dotted name; all of them for no names.

    ``module:f,g`` narrows a module to those functions (``name`` or ``Class.name``).
    """
    if not names:
        return list(TARGETS)
    chosen: list[Target] = []
    for name in names:
        name, _, only = name.partition(":")
        found = [t for t in TARGETS if name in (t.group, t.path, t.dotted, Path(t.path).stem)]
        if not found:
            known = ", ".join([*GROUPS, *(Path(t.path).stem for t in TARGETS)])
            sys.exit(f"unknown module or group {name!r}; choose from {known}")
        if only:
            if len(found) != 1:
                sys.exit(f"{name}:{only}: functions can only narrow one module")
            wanted = only.split(",")
            known_functions = found[0].functions or tuple(wanted)
            functions = tuple(
                f for f in known_functions if any(f == w or f.endswith("." + w) for w in wanted)
            )
            if len(functions) < len(wanted):
                sys.exit(f"{name}:{only}: not all of these are in {known_functions}")
            found = [dataclasses.replace(found[0], functions=functions)]
        chosen += [t for t in found if t not in chosen]
    return chosen


def mutant_patterns(target: Target) -> list[str]:
    """mutmut's name patterns for the target's functions (its mangled method names)."""
    patterns = []
    for function in target.functions:
        cls, _, name = function.rpartition(".")
        mangled = f"xǁ{cls}ǁ{name}" if cls else f"x_{name}"
        patterns.append(f"{target.dotted}.{mangled}__mutmut_*")
    return patterns


def pytest_selection(target: Target) -> list[str]:
    selection = list(target.tests)
    if os.environ.get("MUTATION_BACKENDS", "all") == "sqlite" and target.group == "io":
        selection += ["-k", "not postgres and not redis"]
    return selection


def prepare(target: Target, jobs: int) -> Path:
    """A fresh copy of the project (tracked and unignored files) configured for ``target``."""
    work = WORK / target.slug
    if work.exists() and os.environ.get("MUTATION_FRESH"):
        shutil.rmtree(work)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    base = tomllib.loads(pyproject).get("tool", {}).get("mutmut", {})
    for key in ("only_mutate", "pytest_add_cli_args_test_selection"):
        if key in base:
            sys.exit(f"pyproject.toml [tool.mutmut] must not set {key}: scripts/mutation.py does")
    own = [
        f"only_mutate = {toml_list([target.path])}",
        f"pytest_add_cli_args_test_selection = {toml_list(pytest_selection(target))}",
    ]
    if target.group == "io":
        # Fork each mutant from a process that has imported the tests but never run one, so no
        # event loop, pool or session fixture of the recording run is inherited. With one job
        # at a time the workers may share the conftest's per-process template database name;
        # with more, each must import the tests itself (about 4 s more per mutant).
        warmup = "collect" if jobs == 1 else "none"
        own += ['process_isolation = "forkserver"', f'forkserver_warmup = "{warmup}"']
        # A mutant that hangs a test costs this much, not the suite's 120 s.
        own += ['pytest_add_cli_args = ["--timeout=60"]']
    header = "[tool.mutmut]\n"
    if header not in pyproject:
        sys.exit("pyproject.toml has no [tool.mutmut] section")
    (work / "pyproject.toml").write_text(
        pyproject.replace(header, header + "\n".join(own) + "\n", 1)
    )
    seed_verdicts(target, work)
    retest_survivors(work)
    return work


def _meta(target: Target, work: Path) -> Path:
    """Where mutmut keeps the verdicts of ``target``'s mutants in its copy ``work``."""
    return work / "mutants" / (target.path + ".meta")


def seed_verdicts(target: Target, work: Path) -> None:
    """Give a new copy the verdicts committed in ``scripts/mutation-verdicts/``.

    mutmut keeps a verdict only while its function's source hash is unchanged, so what it
    takes from here is exactly what still holds for the code as it is.
    """
    kept = VERDICTS / f"{target.slug}.json"
    meta = _meta(target, work)
    if kept.exists() and not meta.exists() and not os.environ.get("MUTATION_FRESH"):
        meta.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, meta)


def keep_verdicts(target: Target) -> None:
    """Commit-ready copy of the module's verdicts (killed ones; survivors are retested anyway)."""
    meta = _meta(target, WORK / target.slug)
    if not meta.exists():
        return
    data = json.loads(meta.read_text())
    VERDICTS.mkdir(parents=True, exist_ok=True)
    (VERDICTS / f"{target.slug}.json").write_text(json.dumps(data, indent=0, sort_keys=True))


#: mutmut's exit codes for "survived" and "no tests": retested on every run.
_SURVIVED_CODES = (0, 33)
#: The code mutmut gives every mutant it had not tested yet when a run is interrupted (it calls
#: it a timeout): such a mutant was never tested, so it is unchecked, never killed.
_INTERRUPTED = 255


def retest_survivors(work: Path) -> int:
    """Forget the verdict of every surviving mutant of an earlier run in ``work``.

    mutmut keeps its verdicts between runs and re-tests a mutant only when its function's source
    changed; a test added since could kill a survivor, so survivors are always tested again.
    Killed mutants stay killed: a new test cannot revive them, and a changed function is
    re-tested by mutmut itself. Returns how many verdicts were forgotten.
    """
    return _forget(work, (*_SURVIVED_CODES, _INTERRUPTED))


def _forget(work: Path, codes: tuple[int, ...]) -> int:
    """Set every verdict with one of ``codes`` back to unchecked; how many there were."""
    forgotten = 0
    for meta in (work / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        verdicts = data.get("exit_code_by_key", {})
        for name, code in verdicts.items():
            if code in codes:
                verdicts[name] = None
                forgotten += 1
        meta.write_text(json.dumps(data))
    return forgotten


def toml_list(items: list[str]) -> str:
    # A JSON array of strings is a valid TOML array.
    return json.dumps(items)


def mutmut(work: Path, *args: str, quiet: bool = True) -> str:
    done = subprocess.run(
        [str(MUTMUT), *args],
        cwd=work,
        env=mutmut_env(),
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
    )
    if done.returncode != 0:
        output = done.stdout[-4000:] if done.stdout else ""
        sys.exit(f"mutmut {' '.join(args)} failed ({done.returncode}) in {work}\n{output}")
    return done.stdout or ""


def run(target: Target, jobs: int, deadline: float | None) -> Result:
    """Mutate ``target``, test its mutants, and stop at ``deadline`` (monotonic) if one is set."""
    resumed = (WORK / target.slug).exists() or (VERDICTS / f"{target.slug}.json").exists()
    resumed = resumed and not os.environ.get("MUTATION_FRESH")
    work = prepare(target, jobs)
    started = time.monotonic()
    print(f"== {target.path} ({GROUPS[target.group]}): {', '.join(target.tests)}", flush=True)
    log = work / "mutmut-run.log"
    stopped = False
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(MUTMUT), "run", "--max-children", str(jobs), *mutant_patterns(target)],
            cwd=work,
            env=mutmut_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a stop reaches its workers
        )
        try:
            process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stopped = True
            os.killpg(process.pid, signal.SIGINT)  # mutmut keeps every result it has
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    seconds = time.monotonic() - started
    if stopped:
        # What the stop left untested is marked 255 ("timeout"): unchecked, not killed.
        _forget(work, (_INTERRUPTED,))
    if process.returncode != 0 and not stopped:
        tail = log.read_text(errors="replace")[-4000:]
        sys.exit(f"mutmut run failed ({process.returncode}) for {target.path}; see {log}\n{tail}")
    statuses: dict[str, str] = {}
    # The report covers the whole target as TARGETS names it, so a run narrowed to some functions
    # adds to (and keeps) the verdicts of earlier runs on the others.
    wanted = [re.compile(fnmatch_to_regex(p)) for p in mutant_patterns(base_target(target))]
    narrowed = [re.compile(fnmatch_to_regex(p)) for p in mutant_patterns(target)]
    for line in mutmut(work, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or not name.startswith(target.dotted + "."):
            continue
        if wanted and not any(w.fullmatch(name) for w in wanted):
            continue
        statuses[name] = status
    keep_verdicts(target)
    result = Result(base_target(target), statuses, {}, seconds, resumed)
    missed = [
        name
        for name, status in statuses.items()
        if status not in KILLED | SURVIVED | {"skipped"}
        and (not narrowed or any(n.fullmatch(name) for n in narrowed))
    ]
    if missed and not stopped:
        sys.exit(f"{len(missed)} mutant(s) of {target.path} not checked; see {log}")
    for name in result.survivors:
        result.diffs[name] = short_diff(mutmut(work, "show", name))
    return result


def base_target(target: Target) -> Target:
    """The entry of TARGETS that ``target`` (perhaps narrowed to some functions) comes from."""
    return next(t for t in TARGETS if t.path == target.path)


def mutmut_env() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("MUTATION_BACKENDS", "all") == "sqlite":
        env.pop("CI", None)  # the skipped PostgreSQL and Redis cells are intended here
    return env


def fnmatch_to_regex(pattern: str) -> str:
    return ".*".join(re.escape(part) for part in pattern.split("*"))


def short_diff(shown: str) -> str:
    """The changed lines of ``mutmut show``'s unified diff."""
    lines = [
        line
        for line in shown.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return "\n".join(lines)


# -- the report in docs/testing.md ----------------------------------------------------------

BEGIN, END = "<!-- mutation:results -->", "<!-- /mutation:results -->"
MODULE = re.compile(
    r"<!-- mutation:module (?P<path>\S+) group=(?P<group>\w+) killed=(?P<killed>\d+) "
    r"total=(?P<total>\d+) unchecked=(?P<unchecked>\d+) seconds=(?P<seconds>\d+) "
    r"date=(?P<date>\S+) -->\n"
    r"(?P<body>.*?)<!-- /mutation:module -->\n",
    re.S,
)


def render_module(result: Result, date: str) -> str:
    t = result.target
    lines = [
        f"<!-- mutation:module {t.path} group={t.group} killed={result.killed} "
        f"total={result.total} unchecked={result.unchecked} seconds={round(result.seconds)} "
        f"date={date} -->",
        f"#### `{t.path}` — {result.killed} killed of {result.total} "
        f"({score(result.killed, result.total)}), {round(result.seconds)} s, {date}",
        "",
        "Tests: "
        + ", ".join(f"`{name}`" for name in t.tests)
        + (f"; functions: {', '.join(t.functions)}" if t.functions else "")
        + ".",
        "",
    ]
    if t.group == "io" and os.environ.get("MUTATION_BACKENDS", "all") == "sqlite":
        lines += ["Backends: SQLite and the in-memory broker only (PostgreSQL, Redis skipped).", ""]
    if result.unchecked:
        lines += [
            f"**Partial run**: the time budget ran out with {result.unchecked} of "
            f"{result.unchecked + result.total} mutants not checked (mutmut takes those with "
            "the fastest tests first); the score counts the checked ones only.",
            "",
        ]
    if not result.survivors:
        lines += ["No survivors.", ""]
    for name in result.survivors:
        why = EQUIVALENT.get(name, "**not yet judged** (a test should kill it, or say why not)")
        status = result.statuses[name]
        lines += [f"- `{name}` ({status}): {why}", "", "  ```diff"]
        lines += [f"  {line}" for line in result.diffs[name].splitlines()]
        lines += ["  ```", ""]
    lines.append("<!-- /mutation:module -->")
    return "\n".join(lines) + "\n"


def write_report(results: list[Result]) -> None:
    """Replace the run modules' entries in docs/testing.md and recompute the score table."""
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN not in text:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    modules = {m["path"]: m.group(0) for m in MODULE.finditer(block)}
    date = dt.date.today().isoformat()
    for result in results:
        earlier = MODULE.match(modules.get(result.target.path, ""))
        if result.resumed and earlier:
            result = dataclasses.replace(result, seconds=result.seconds + int(earlier["seconds"]))
        modules[result.target.path] = render_module(result, date)
    order = [t.path for t in TARGETS]
    entries = sorted(modules.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    parsed = [MODULE.match(entry) for _, entry in entries]
    rows = [
        "| group | module | killed | of | score | goal | time (all runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, label in GROUPS.items():
        mine = [m for m in parsed if m and m["group"] == group]
        for m in mine:
            k, n = int(m["killed"]), int(m["total"])
            partial = f" (+{m['unchecked']} unchecked)" if int(m["unchecked"]) else ""
            rows.append(
                f"| {label} | `{m['path']}` | {k} | {n}{partial} | {score(k, n)} | | "
                f"{m['seconds']} s |"
            )
        if mine:
            k = sum(int(m["killed"]) for m in mine)
            n = sum(int(m["total"]) for m in mine)
            s = sum(int(m["seconds"]) for m in mine)
            rows.append(
                f"| **{label}** | all | **{k}** | **{n}** | **{score(k, n)}** | "
                f"≥ {GOALS[group]:.0f} % | {s} s |"
            )
    body = [
        "_Written by `./scripts/mutation`; the explanations of equivalent survivors live in "
        "`EQUIVALENT` in `scripts/mutation.py`._",
        "",
        *rows,
        "",
        *(entry for _, entry in entries),
    ]
    DOC.write_text(head + BEGIN + "\n" + "\n".join(body) + END + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="pure, io, or module names (default: all)")
    parser.add_argument(
        "--table",
        action="store_true",
        help="run nothing: recompute the score table of docs/testing.md from its module entries",
    )
    args = parser.parse_args()
    if args.table:
        for target in TARGETS:
            keep_verdicts(target)
        write_report([])
        return 0
    targets = select(args.names)
    jobs = int(os.environ.get("MUTATION_JOBS", "1"))
    budget = os.environ.get("MUTATION_BUDGET")
    deadline = time.monotonic() + float(budget) if budget else None
    results: list[Result] = []
    for target in targets:
        if deadline is not None and time.monotonic() >= deadline:
            print(f"{target.path}: not run (MUTATION_BUDGET spent)")
            continue
        results.append(run(target, jobs, deadline))
    write_report(results)
    met = True
    for result in results:
        t = result.target
        print(
            f"{t.path}: {result.killed} killed of {result.total} "
            f"({score(result.killed, result.total)}) in {result.seconds:.0f} s"
            + (f"; {result.unchecked} not checked (budget spent)" if result.unchecked else "")
        )
        for name in result.survivors:
            print(f"  survived: {name} ({result.statuses[name]})")
    for group, label in GROUPS.items():
        mine = [r for r in results if r.target.group == group]
        if not mine:
            continue
        k, n = sum(r.killed for r in mine), sum(r.total for r in mine)
        unchecked = sum(r.unchecked for r in mine)
        ok = bool(n) and percent(k, n) >= GOALS[group] and not unchecked
        met = met and ok
        verdict = "met" if ok else "MISSED" if not unchecked else f"partial, {unchecked} unchecked"
        print(f"{label}: {k} killed of {n} ({score(k, n)}), goal ≥ {GOALS[group]:.0f} % {verdict}")
    k, n = sum(r.killed for r in results), sum(r.total for r in results)
    print(f"mutation score: {k} killed of {n} ({score(k, n)})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
