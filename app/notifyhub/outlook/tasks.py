"""The daily-outlook tasks: fan out generation, deliver at local morning, measure engagement.

Delivery timing: each outlook is due at one instant, its user's local delivery time on its
date (:func:`.timing.target_instant`): a saved time, else the user's learned best hour
(``user_send_hours``, joined into the query that reads the user or the outlook, so no sweep
asks once per user), else the defaults. The five-minute ``deliver_due_outlooks`` sweep does not
send at that instant itself; it looks :data:`LOOKAHEAD` ahead and enqueues one
``deliver_outlook`` job per outlook *delayed until its instant*, so the send starts within the
worker's promotion interval of the target (well under a minute) instead of up to five minutes
plus jitter late. Outlooks whose instant has already passed (generated late, or a sweep was
missed) are sent by the sweep at once, as before. A cron entry every minute was the other
option; it would still be up to a minute late, run 1,440 queries a day to do the work of a
few hundred delayed jobs, and lean on cron jitter staying small. Enqueuing the delayed jobs at
generation time instead would park them for up to a day, long enough for a user to change
zone or preferences; a lookahead of minutes sees those changes, and each delayed job re-checks
the target when it fires.

Generation is batched: the fan-out enqueues one ``generate_outlook_batch`` job per
:data:`GENERATION_BATCH` (user, date) pairs, and each job reads what it needs for the whole
batch and stores every outlook in one statement (seven statements a batch, not seven a user).

Duplicate runs are expected (cron catch-up, retries, an operator re-running a day), so every
step is safe to repeat: the fan-out skips users who already have the day's outlook and gives
each batch job a key naming its users and dates, the store is an upsert on (user, date) that
keeps what is there, and delivery gives each notification a key per outlook and marks the
outlook delivered only after the enqueue.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
from pydantic import BaseModel, Field, model_validator

from notifyhub.experiments import variants_for
from notifyhub.state import HandlerState
from qrunner import Context, JobSpec, Registry

from .content import (
    CONTENT_EXPERIMENT,
    Bill,
    Goal,
    Spending,
    apply_variant,
    build_outlook,
    render_email,
    render_sms,
)
from .timing import is_due, outlook_dates_between, resolve_zone, target_instant, utc_now

log = logging.getLogger(__name__)

registry = Registry()

QUEUE = "daily_outlook"
#: Rows fetched per round trip while streaming users or outlooks; also the enqueue batch size.
BATCH = 500
#: Outlooks one ``generate_outlook_batch`` job computes and stores: a few dozen milliseconds of
#: work, and enough jobs per run that several workers share it.
GENERATION_BATCH = 500
#: One generation run covers the delivery instants of the next day: runs are daily, so every
#: instant falls in exactly one run's window.
GENERATION_WINDOW = timedelta(days=1)
#: How far ahead a sweep schedules deliveries: three five-minute sweeps, so one missed or late
#: sweep still leaves every outlook scheduled before its instant.
LOOKAHEAD = timedelta(minutes=15)
#: A delayed delivery whose user's target has since moved by more than this is left to the sweep.
RETARGET_TOLERANCE = timedelta(seconds=1)
#: Keys of delayed deliveries outlive the lookahead with room to spare.
DELIVERY_KEY_TTL_S = 2 * 24 * 3600


class GenerateDailyOutlooks(BaseModel):
    """Cron fires this with ``scheduled_for`` (the slot); ``now`` overrides it in tests."""

    target_date: date | None = None
    scheduled_for: datetime | None = None
    now: datetime | None = None
    force_regenerate: bool = False
    active_days: int = Field(default=30, ge=1, le=365)


class GenerateUserOutlook(BaseModel):
    user_id: int
    outlook_date: date
    force: bool = False


class GenerateOutlookBatch(BaseModel):
    """The outlooks of ``user_ids[i]`` for ``outlook_dates[i]``: the fan-out's unit of work."""

    user_ids: list[int] = Field(min_length=1, max_length=5000)
    outlook_dates: list[date] = Field(min_length=1, max_length=5000)
    force: bool = False

    @model_validator(mode="after")
    def _paired(self) -> GenerateOutlookBatch:
        if len(self.user_ids) != len(self.outlook_dates):
            raise ValueError("user_ids and outlook_dates must have the same length")
        return self


class DeliverDueOutlooks(BaseModel):
    now: datetime | None = None


class DeliverOutlook(BaseModel):
    """One outlook's delivery, enqueued delayed until ``due_at``. ``now`` is set only when the
    sweep itself ran at an injected time (tests, re-runs): the job then runs at ``due_at``."""

    outlook_id: int
    due_at: datetime
    now: datetime | None = None


class OptimizeOutlookContent(BaseModel):
    analysis_period_days: int = Field(default=7, ge=1, le=90)
    now: datetime | None = None
    #: Fewer delivered outlooks than this and a content type is not judged at all.
    min_sample: int = Field(default=20, ge=1)
    low_view_rate: float = Field(default=0.3, ge=0, le=1)
    low_rating: float = Field(default=3.0, ge=1, le=5)


# -- generation --------------------------------------------------------------------------------


@registry.task(
    queue=QUEUE, payload=GenerateDailyOutlooks, max_retries=3, backoff_base_s=300, timeout_s=600
)
async def generate_daily_outlooks(
    ctx: Context[HandlerState], payload: GenerateDailyOutlooks
) -> dict[str, Any]:
    """Enqueue ``generate_outlook_batch`` jobs, :data:`GENERATION_BATCH` outlooks each, for the
    active users that lack the day's outlook.

    Users are streamed with a server-side cursor and enqueued in batches, so memory stays flat
    however many users there are. Users with the same zone and delivery preferences share their
    outlook dates, so the zone arithmetic runs once per combination, not once per user.
    """
    ref = utc_now(payload.now or payload.scheduled_for)
    since = ref - timedelta(days=payload.active_days)
    dates_for = _date_finder(ref, payload.target_date)
    forced_by = ctx.job_id if payload.force_regenerate else None
    total = enqueued = existing = batches = 0
    todo: list[tuple[int, date]] = []

    async def flush(final: bool) -> None:
        nonlocal todo, enqueued, batches
        cut = len(todo) if final else len(todo) - len(todo) % GENERATION_BATCH
        if cut == 0:
            return
        specs = [
            _batch_spec(todo[i : i + GENERATION_BATCH], payload.force_regenerate, forced_by)
            for i in range(0, cut, GENERATION_BATCH)
        ]
        await ctx.client.enqueue_many(specs)
        enqueued += cut
        batches += len(specs)
        todo = todo[cut:]

    async with ctx.state.db.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(
            "SELECT u.id, u.time_zone, u.outlook_weekday_at, u.outlook_weekend_at, sh.best_hour"
            " FROM users u LEFT JOIN user_send_hours sh ON sh.user_id = u.id"
            " WHERE u.last_active_at >= $1 ORDER BY u.id",
            since,
        )
        while rows := await cursor.fetch(BATCH):
            total += len(rows)
            wanted = [(r["id"], day) for r in rows for day in dates_for(r)]
            have: set[tuple[int, date]] = set()
            if not payload.force_regenerate:
                have = await _existing_outlooks(conn, wanted)
            missing = [pair for pair in wanted if pair not in have]
            existing += len(wanted) - len(missing)
            todo += missing
            await flush(final=False)
        await flush(final=True)
    log.info(
        "daily outlooks: %d active user(s), %d outlook(s) enqueued in %d batch(es),"
        " %d already generated",
        total,
        enqueued,
        batches,
        existing,
    )
    return {
        "reference": ref.isoformat(),
        "total_users": total,
        "enqueued": enqueued,
        "batches": batches,
        "skipped_existing": existing,
    }


def _date_finder(ref: datetime, fixed: date | None) -> Callable[[asyncpg.Record], list[date]]:
    """:func:`_target_dates` for one run, remembered per zone and delivery preferences."""
    found: dict[tuple[Any, ...], list[date]] = {}

    def dates(row: asyncpg.Record) -> list[date]:
        if fixed is not None:
            return [fixed]
        key = (
            row["time_zone"],
            row["outlook_weekday_at"],
            row["outlook_weekend_at"],
            row["best_hour"],
        )
        days = found.get(key)
        if days is None:
            days = found[key] = _target_dates(row, ref, None)
        return days

    return dates


def _target_dates(row: asyncpg.Record, ref: datetime, fixed: date | None) -> list[date]:
    """The dates this run generates for one user: those whose delivery instant falls in
    ``[ref, ref + 1 day)``. A fixed start time per run (not "the next morning") is what keeps
    a day from being skipped or generated twice when DST or the weekend time moves it."""
    if fixed is not None:
        return [fixed]
    zone = resolve_zone(row["time_zone"])
    return outlook_dates_between(
        ref,
        ref + GENERATION_WINDOW,
        zone,
        row["outlook_weekday_at"],
        row["outlook_weekend_at"],
        best_hour=row["best_hour"],
    )


def _batch_spec(pairs: Sequence[tuple[int, date]], force: bool, forced_by: str | None) -> JobSpec:
    """One batch job; its key names exactly its (user, date) pairs, so a second fan-out that
    finds the same users still without outlooks does not queue the same work twice. A forced
    re-run gets keys of its own so it is not deduplicated against the original run."""
    digest = hashlib.sha256(
        ",".join(f"{uid}:{day.isoformat()}" for uid, day in pairs).encode()
    ).hexdigest()[:24]
    first, last = pairs[0], pairs[-1]
    key = f"outlooks:{first[0]}:{first[1].isoformat()}..{last[0]}:{last[1].isoformat()}:{digest}"
    return JobSpec(
        "generate_outlook_batch",
        {
            "user_ids": [uid for uid, _ in pairs],
            "outlook_dates": [day.isoformat() for _, day in pairs],
            "force": force,
        },
        key=f"{key}:force:{forced_by}" if forced_by else key,
    )


async def _existing_outlooks(
    conn: asyncpg.Connection, wanted: Sequence[tuple[int, date]]
) -> set[tuple[int, date]]:
    rows = await conn.fetch(
        "SELECT o.user_id, o.outlook_date FROM daily_outlooks o"
        " JOIN unnest($1::bigint[], $2::date[]) AS w(user_id, day)"
        "   ON o.user_id = w.user_id AND o.outlook_date = w.day",
        [u for u, _ in wanted],
        [d for _, d in wanted],
    )
    return {(r["user_id"], r["outlook_date"]) for r in rows}


@registry.task(
    queue=QUEUE, payload=GenerateOutlookBatch, max_retries=3, backoff_base_s=60, timeout_s=300
)
async def generate_outlook_batch(
    ctx: Context[HandlerState], payload: GenerateOutlookBatch
) -> dict[str, Any]:
    """Compute and store the outlooks of a batch of (user, date) pairs, once per pair.

    Seven statements whatever the batch size (users, bills, goals, spending, the A/B test, its
    assignments, the store), instead of seven per user. Without ``force`` an existing outlook is
    kept as it is; with it the content is replaced while it has not been delivered.
    """
    pairs = list(dict.fromkeys(zip(payload.user_ids, payload.outlook_dates, strict=True)))
    async with ctx.state.db.acquire() as conn:
        outcomes = await _generate(conn, pairs, force=payload.force)
    counts = {status: 0 for status in _STATUSES}
    for status, _ in outcomes.values():
        counts[status] += 1
    return {"outlooks": len(pairs), **counts}


@registry.task(
    queue=QUEUE, payload=GenerateUserOutlook, max_retries=3, backoff_base_s=60, timeout_s=120
)
async def generate_user_outlook(
    ctx: Context[HandlerState], payload: GenerateUserOutlook
) -> dict[str, Any]:
    """Compute one user's outlook and store it once per (user, date): the batch job's work for
    one pair (an operator's re-run for one user, tests).

    Without ``force`` an existing outlook is kept as it is; with it the content is replaced,
    but only while it has not been delivered, so nobody is sent one text and shown another.
    """
    pair = (payload.user_id, payload.outlook_date)
    async with ctx.state.db.acquire() as conn:
        outcomes = await _generate(conn, [pair], force=payload.force)
    status, kind = outcomes[pair]
    if kind is None:
        return {"user_id": payload.user_id, "status": status}
    return {
        "user_id": payload.user_id,
        "outlook_date": payload.outlook_date.isoformat(),
        "status": status,
        "type": kind,
    }


#: What happened to each pair: stored (``created``; ``regenerated`` when forced), left as it was
#: (``exists``; ``kept_delivered`` when forced and already delivered), or no such user.
_STATUSES = ("created", "exists", "regenerated", "kept_delivered", "user_gone")

_USERS = "SELECT id, name, time_zone FROM users WHERE id = ANY($1::bigint[])"
# Each pair's first five bills due within a week of its date, in due-date order.
_BILLS = """
SELECT w.n, b.payee, b.amount, b.currency, b.due_date
FROM unnest($1::bigint[], $2::date[]) WITH ORDINALITY AS w(user_id, day, n)
CROSS JOIN LATERAL (
    SELECT id, payee, amount, currency, due_date FROM bills
    WHERE user_id = w.user_id AND status = 'due' AND due_date BETWEEN w.day AND w.day + 7
    ORDER BY due_date, id LIMIT 5
) b
ORDER BY w.n, b.due_date, b.id
"""
# Each user's first five active goals.
_GOALS = """
SELECT u.id AS user_id, g.title, g.target_amount, g.current_amount, g.currency, g.target_date
FROM unnest($1::bigint[]) AS u(id)
CROSS JOIN LATERAL (
    SELECT id, title, target_amount, current_amount, currency, target_date, created_at
    FROM goals WHERE user_id = u.id AND status = 'active' ORDER BY created_at, id LIMIT 5
) g
ORDER BY u.id, g.created_at, g.id
"""
# Orders are the only record of a user's own spending; without orders the section is omitted.
# The window is each pair's seven local days before its date.
_SPENDING = """
SELECT w.n, o.currency, sum(o.total) AS total, count(*) AS orders
FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY
     AS w(user_id, since, until, n)
JOIN orders o ON o.user_id = w.user_id AND o.placed_at >= w.since AND o.placed_at < w.until
WHERE o.status IN ('paid', 'shipped', 'delivered')
GROUP BY w.n, o.currency
ORDER BY w.n, o.currency
"""
_STORE = """
INSERT INTO daily_outlooks (user_id, outlook_date, content)
SELECT u, d, c::jsonb FROM unnest($1::bigint[], $2::date[], $3::text[]) AS t(u, d, c)
ON CONFLICT (user_id, outlook_date) DO {action}
RETURNING user_id, outlook_date
"""
_STORE_NEW = _STORE.format(action="NOTHING")
# Forced: replaced only while undelivered, so nobody is sent one text and shown another.
_STORE_FORCED = _STORE.format(
    action="UPDATE SET content = EXCLUDED.content, generated_at = now()"
    " WHERE daily_outlooks.delivered_at IS NULL"
)


async def _generate(
    conn: asyncpg.Connection, pairs: Sequence[tuple[int, date]], *, force: bool
) -> dict[tuple[int, date], tuple[str, str | None]]:
    """Status and content type of each distinct (user, date) in ``pairs`` (type ``None`` for a
    user that no longer exists), the outlooks stored as the module docstring says."""
    users = {r["id"]: r for r in await conn.fetch(_USERS, sorted({u for u, _ in pairs}))}
    outcomes: dict[tuple[int, date], tuple[str, str | None]] = {
        pair: ("user_gone", None) for pair in pairs if pair[0] not in users
    }
    live = [pair for pair in pairs if pair[0] in users]
    if not live:
        return outcomes
    contents = await _compose(conn, live, users)
    try:  # while the content A/B test runs, each user sees their assigned variant
        variants = await variants_for(conn, CONTENT_EXPERIMENT, sorted({u for u, _ in live}))
    except LookupError:
        variants = {}
    if variants:
        contents = [apply_variant(c, variants[u]) for (u, _), c in zip(live, contents, strict=True)]
    rows = await conn.fetch(
        _STORE_FORCED if force else _STORE_NEW,
        [u for u, _ in live],
        [d for _, d in live],
        [orjson.dumps(c).decode() for c in contents],
    )
    stored = {(r["user_id"], r["outlook_date"]) for r in rows}
    for pair, content in zip(live, contents, strict=True):
        if pair in stored:
            status = "regenerated" if force else "created"
        else:
            status = "kept_delivered" if force else "exists"
        outcomes[pair] = (status, content["type"])
    return outcomes


async def _compose(
    conn: asyncpg.Connection,
    pairs: Sequence[tuple[int, date]],
    users: Mapping[int, asyncpg.Record],
) -> list[dict[str, Any]]:
    """Each pair's outlook content (three statements for the whole batch)."""
    ids = [u for u, _ in pairs]
    day_starts = [
        datetime.combine(day, time(0), resolve_zone(users[uid]["time_zone"])) for uid, day in pairs
    ]
    bills: dict[int, list[Bill]] = {}
    for r in await conn.fetch(_BILLS, ids, [d for _, d in pairs]):
        bills.setdefault(r["n"], []).append(
            Bill(r["payee"], r["amount"], r["currency"], r["due_date"])
        )
    goals: dict[int, list[Goal]] = {}
    for r in await conn.fetch(_GOALS, sorted(set(ids))):
        goals.setdefault(r["user_id"], []).append(
            Goal(
                r["title"], r["target_amount"], r["current_amount"], r["currency"], r["target_date"]
            )
        )
    spending: dict[int, list[Spending]] = {}
    for r in await conn.fetch(
        _SPENDING, ids, [s - timedelta(days=7) for s in day_starts], day_starts
    ):
        spending.setdefault(r["n"], []).append(Spending(r["currency"], r["total"], r["orders"]))
    return [
        build_outlook(
            users[uid]["name"], day, bills.get(n, []), goals.get(uid, []), spending.get(n, [])
        )
        for n, (uid, day) in enumerate(pairs, 1)
    ]


# -- delivery ----------------------------------------------------------------------------------

_OUTLOOK_ROW = """
SELECT o.id, o.user_id, o.outlook_date, o.content,
       u.time_zone, u.outlook_weekday_at, u.outlook_weekend_at, sh.best_hour, u.email, u.phone,
       coalesce(ce.consented, false) AS email_ok, coalesce(cs.consented, false) AS sms_ok,
       EXISTS (SELECT 1 FROM push_devices d WHERE d.user_id = u.id) AS has_device
FROM daily_outlooks o
JOIN users u ON u.id = o.user_id
LEFT JOIN user_send_hours sh ON sh.user_id = u.id
LEFT JOIN current_consents ce ON ce.user_id = u.id AND ce.channel = 'email'
LEFT JOIN current_consents cs ON cs.user_id = u.id AND cs.channel = 'sms'
"""
# Rows a concurrent deliver_outlook holds are skipped: it is sending them.
_UNDELIVERED = (
    _OUTLOOK_ROW + "WHERE o.delivered_at IS NULL AND o.outlook_date BETWEEN $1 AND $2"
    " ORDER BY o.id FOR UPDATE OF o SKIP LOCKED"
)
_ONE_UNDELIVERED = _OUTLOOK_ROW + "WHERE o.id = $1 AND o.delivered_at IS NULL FOR UPDATE OF o"


def _target(r: asyncpg.Record) -> datetime:
    """The outlook's delivery instant: the saved time, else the learned hour, else the default."""
    return target_instant(
        r["outlook_date"],
        resolve_zone(r["time_zone"]),
        r["outlook_weekday_at"],
        r["outlook_weekend_at"],
        best_hour=r["best_hour"],
    )


@registry.task(
    queue=QUEUE, payload=DeliverDueOutlooks, max_retries=2, backoff_base_s=60, timeout_s=300
)
async def deliver_due_outlooks(
    ctx: Context[HandlerState], payload: DeliverDueOutlooks
) -> dict[str, Any]:
    """Send every outlook whose instant has passed; schedule those due within the lookahead.

    The enqueue happens before ``delivered_at`` is set: a crash in between leaves the outlook
    undelivered, the next run enqueues it again, and the per-outlook key drops the duplicate.
    Consent, quiet hours and suppression are the send task's business (checked at send time).
    """
    now = utc_now(payload.now)
    today = now.date()
    counts = {"due": 0, "sent": 0, "no_channel": 0, "scheduled": 0}
    async with ctx.state.db.acquire() as conn, conn.transaction():
        # Local dates run from UTC-12 to UTC+14, so today's outlooks lie within a day of UTC's.
        cursor = await conn.cursor(
            _UNDELIVERED, today - timedelta(days=1), today + timedelta(days=1)
        )
        while rows := await cursor.fetch(BATCH):
            specs: list[JobSpec] = []
            ids: list[int] = []
            later: list[JobSpec] = []
            for r in rows:
                due_at = _target(r)
                if now < due_at <= now + LOOKAHEAD:
                    later.append(_delayed_delivery(r["id"], due_at, now, payload.now is not None))
                    continue
                if not is_due(
                    now,
                    resolve_zone(r["time_zone"]),
                    r["outlook_date"],
                    r["outlook_weekday_at"],
                    r["outlook_weekend_at"],
                    best_hour=r["best_hour"],
                ):
                    continue
                counts["due"] += 1
                spec = _notification(r)
                if spec is None:
                    counts["no_channel"] += 1
                    continue
                counts["sent"] += 1
                specs.append(spec)
                ids.append(r["id"])
            if later:
                await ctx.client.enqueue_many(later)
                counts["scheduled"] += len(later)
            if specs:
                await ctx.client.enqueue_many(specs)
                await _mark_delivered(conn, ids, now)
    if counts["no_channel"]:
        log.warning(
            "%d due outlook(s) have no device, email address or phone number", counts["no_channel"]
        )
    return {"now": now.isoformat(), **counts}


def _delayed_delivery(outlook_id: int, due_at: datetime, now: datetime, pinned: bool) -> JobSpec:
    """``deliver_outlook`` delayed by the time left until ``due_at``.

    A delay rather than an absolute ``at``: measured from the sweep's own "now", it is the same
    in production and under an injected clock. The key names the instant, so later sweeps do
    not add a second job, while a changed preference gets its own.
    """
    return JobSpec(
        "deliver_outlook",
        {
            "outlook_id": outlook_id,
            "due_at": due_at.isoformat(),
            "now": due_at.isoformat() if pinned else None,
        },
        delay_s=(due_at - now).total_seconds(),
        key=f"outlook-deliver:{outlook_id}:{int(due_at.timestamp())}",
        key_ttl_s=DELIVERY_KEY_TTL_S,
    )


async def _mark_delivered(conn: asyncpg.Connection, ids: list[int], at: datetime) -> None:
    await conn.execute(
        "UPDATE daily_outlooks SET delivered_at = $2"
        " WHERE id = ANY($1::bigint[]) AND delivered_at IS NULL",
        ids,
        at,
    )


@registry.task(queue=QUEUE, payload=DeliverOutlook, max_retries=2, backoff_base_s=10, timeout_s=60)
async def deliver_outlook(ctx: Context[HandlerState], payload: DeliverOutlook) -> dict[str, Any]:
    """Send one outlook at its instant, unless it went already or its instant has moved.

    A moved instant (the user changed zone or delivery time since the sweep scheduled this
    job) is left to the sweep, which schedules the new one; a local day that is over is not
    sent at all, as in the sweep.
    """
    now = utc_now(payload.now)
    async with ctx.state.db.acquire() as conn, conn.transaction():
        r = await conn.fetchrow(_ONE_UNDELIVERED, payload.outlook_id)
        if r is None:
            return {"outlook_id": payload.outlook_id, "status": "already_delivered"}
        due_at = _target(r)
        if abs(due_at - payload.due_at) > RETARGET_TOLERANCE:
            return {
                "outlook_id": payload.outlook_id,
                "status": "moved",
                "due_at": due_at.isoformat(),
            }
        if now.astimezone(resolve_zone(r["time_zone"])).date() != r["outlook_date"]:
            return {"outlook_id": payload.outlook_id, "status": "day_over"}
        spec = _notification(r)
        if spec is None:
            log.warning(
                "outlook %d has no device, email address or phone number", payload.outlook_id
            )
            return {"outlook_id": payload.outlook_id, "status": "no_channel"}
        await ctx.client.enqueue_many([spec])
        await _mark_delivered(conn, [r["id"]], now)
    return {"outlook_id": payload.outlook_id, "status": "sent", "channel": "preferred"}


def _notification(r: asyncpg.Record) -> JobSpec | None:
    """One ``send_preferred`` job: push when the user has a device and agreed to push, else
    email, else SMS, each by the user's consents (judged when the job runs; see
    :mod:`notifyhub.messaging.preferred`). None when the user has no way to be reached."""
    if not (r["email"] or r["phone"] or r["has_device"]):
        return None
    subject, text = render_email(r["content"])
    sms_text = render_sms(r["content"])
    return JobSpec(
        "send_preferred",
        {
            "user_id": r["user_id"],
            "title": subject,
            "body": sms_text,
            "email_template": "message",
            "email_context": {
                "email_subject": subject,
                "paragraphs": [p.strip("\n") for p in text.split("\n\n") if p.strip()],
            },
            "sms_text": sms_text,
            "template": "daily_outlook",
            "collapse_key": "daily-outlook",
            "data": {"outlook_id": str(r["id"])},
            # Sent at the morning time the user has (or was given): not held by quiet hours.
            "quiet_hours_exempt": True,
        },
        key=f"outlook-notify:{r['id']}",
    )


# -- engagement --------------------------------------------------------------------------------

_ENGAGEMENT = """
SELECT coalesce(content->>'type', 'unknown') AS content_type,
       count(*) AS outlooks,
       count(delivered_at) AS delivered,
       count(viewed_at) AS viewed,
       count(rating) AS rated,
       round(avg(rating), 2) AS average_rating,
       count(*) FILTER (WHERE jsonb_array_length(actions) > 0) AS with_actions
FROM daily_outlooks
WHERE outlook_date BETWEEN $1 AND $2
GROUP BY 1
ORDER BY 1
"""


@registry.task(
    queue="reports",
    payload=OptimizeOutlookContent,
    max_retries=2,
    backoff_base_s=300,
    timeout_s=600,
)
async def optimize_outlook_content(
    ctx: Context[HandlerState], payload: OptimizeOutlookContent
) -> dict[str, Any]:
    """Measure views, ratings and actions per content type over the last N full days and
    store them in ``outlook_content_stats``, flagging types that under-perform.

    On the ``reports`` queue (as schedules.yaml routes it): it is an analysis that may scan a
    week of outlooks and must not hold up the morning deliveries on ``daily_outlook``.
    """
    end = utc_now(payload.now).date() - timedelta(days=1)
    start = end - timedelta(days=payload.analysis_period_days - 1)
    types: list[dict[str, Any]] = []
    async with ctx.state.db.acquire() as conn, conn.transaction():
        for r in await conn.fetch(_ENGAGEMENT, start, end):
            view_rate = r["viewed"] / r["delivered"] if r["delivered"] else None
            rating: Decimal | None = r["average_rating"]
            low = r["delivered"] >= payload.min_sample and (
                (view_rate is not None and view_rate < payload.low_view_rate)
                or (
                    r["rated"] >= payload.min_sample
                    and rating is not None
                    and rating < Decimal(str(payload.low_rating))
                )
            )
            await conn.execute(
                "INSERT INTO outlook_content_stats (period_start, period_end, content_type,"
                "  outlooks, delivered, viewed, rated, average_rating, with_actions, view_rate,"
                "  low_performing)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                " ON CONFLICT (period_end, period_start, content_type) DO UPDATE SET"
                "  outlooks = EXCLUDED.outlooks, delivered = EXCLUDED.delivered,"
                "  viewed = EXCLUDED.viewed, rated = EXCLUDED.rated,"
                "  average_rating = EXCLUDED.average_rating, with_actions = EXCLUDED.with_actions,"
                "  view_rate = EXCLUDED.view_rate, low_performing = EXCLUDED.low_performing,"
                "  computed_at = now()",
                start,
                end,
                r["content_type"],
                r["outlooks"],
                r["delivered"],
                r["viewed"],
                r["rated"],
                rating,
                r["with_actions"],
                None if view_rate is None else round(view_rate, 4),
                low,
            )
            types.append(
                {
                    "content_type": r["content_type"],
                    "outlooks": r["outlooks"],
                    "delivered": r["delivered"],
                    "viewed": r["viewed"],
                    "view_rate": None if view_rate is None else round(view_rate, 4),
                    "average_rating": None if rating is None else float(rating),
                    "with_actions": r["with_actions"],
                    "low_performing": low,
                }
            )
    low_types = [t["content_type"] for t in types if t["low_performing"]]
    if low_types:
        log.warning(
            "outlook content under-performing in %s..%s: %s", start, end, ", ".join(low_types)
        )
    return {
        "period": {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "days": payload.analysis_period_days,
        },
        "content_types": types,
        "low_performing": low_types,
    }
