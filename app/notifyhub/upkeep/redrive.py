"""Re-drive deliveries that failed for a transient reason, a bounded number of times.

qrunner already retries a failing send and dead-letters it when retries run out. What is left
for this task is the dead-lettered send whose last error was transient (a provider outage that
outlasted the retries): it goes back on its queue. Three rules, each a tombstone outcome:

- **never a maybe-sent SMS** (``maybe_sent``): a job with any attempt logged ``maybe_sent``,
  a row a status callback resolved from maybe-sent (``resolved_from``), or an effect-ledger
  entry still ``maybe_sent`` may have reached the phone (DESIGN G3); it is never re-sent,
  whatever later attempts or callbacks said;
- **only transient failures** (``not_transient``): a refusal, an invalid number or an opt-out
  fails the same way every time;
- **bounded** (``exhausted``): a job is replayed at most ``max_redrives`` times (default 1)
  over its life, so a send that keeps failing after its replays is left dead.

A message that some attempt sent or suppressed is not examined at all.

The job is replayed from the dead-letter stream, keeping its id and idempotency key, so the
send task's effect ledger and the email provider's Idempotency-Key still recognise it; the
replay removes the entry from the stream atomically, so it cannot happen twice, and a
``delivery_redrives`` row records the decision so later runs skip the failure for good.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context, JobNotFound

from .catalog import QUEUE, registry, utc_now

log = logging.getLogger(__name__)

# Wording of the provider clients' errors (handlers/providers): a PermanentProviderError reads
# "<provider> refused the message (<code>): ...", a TransientProviderError "HTTP 5xx ...",
# "... unreachable before the request was sent", "... request failed (...)", "... still
# processing an earlier attempt ...". Generic network wording is matched too, for other senders.
_PERMANENT = re.compile(
    r"permanent|refused the message|invalid|unsubscribed|opted.?out|blocked|blacklist"
    r"|not.?allowed|forbidden|\b(400|401|403|404|410|422)\b|consent|suppress",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"transient|throttl|rate.?limit|timeout|timed.?out|temporar|unavailable|unreachable"
    r"|connect|reset by peer|try again|request failed|still processing|without an id"
    r"|\bHTTP 5\d\d\b|\b(429|500|502|503|504)\b",
    re.IGNORECASE,
)
#: Job states in which qrunner itself is still working on the job.
_IN_FLIGHT = frozenset({"queued", "scheduled", "retrying", "running"})


def is_transient(error: str | None) -> bool:
    """True when the logged error says a later attempt may succeed. Permanent wording wins:
    "invalid number (timeout talking to lookup)" is still an invalid number."""
    if not error or _PERMANENT.search(error):
        return False
    return bool(_TRANSIENT.search(error))


class ProcessFailedMessages(BaseModel):
    lookback_hours: int = Field(default=24, ge=1, le=7 * 24)
    limit: int = Field(default=500, ge=1, le=10_000)
    #: Replays a job may have over its life; later failures of it are left dead.
    max_redrives: int = Field(default=1, ge=1, le=5)
    now: datetime | None = None


_CANDIDATES = """
SELECT d.id, d.job_id, d.error,
       (d.resolved_from = 'maybe_sent'
        OR EXISTS (SELECT 1 FROM delivery_log m
                   WHERE (m.job_id = d.job_id
                          OR (d.idempotency_key IS NOT NULL
                              AND m.idempotency_key = d.idempotency_key))
                     AND (m.status = 'maybe_sent' OR m.resolved_from = 'maybe_sent'))
        OR EXISTS (SELECT 1 FROM effect_ledger l
                   WHERE l.job_id = d.job_id AND l.state = 'maybe_sent')) AS maybe_sent,
       (SELECT count(*) FROM delivery_redrives r
        WHERE r.job_id = d.job_id AND r.outcome = 'replayed') AS replays
FROM delivery_log d
WHERE d.status = 'failed' AND d.created_at >= $1
  AND NOT EXISTS (SELECT 1 FROM delivery_redrives r WHERE r.delivery_log_id = d.id)
  AND NOT EXISTS (
      SELECT 1 FROM delivery_log later
      WHERE later.status IN ('sent', 'sandbox', 'suppressed') AND later.resolved_from IS NULL
        AND (later.job_id = d.job_id
             OR (d.idempotency_key IS NOT NULL AND later.idempotency_key = d.idempotency_key)))
ORDER BY d.id
LIMIT $2
"""


def verdict(error: str | None, maybe_sent: bool, replays: int, max_redrives: int) -> str | None:
    """Why a failed delivery must not be re-driven (its tombstone outcome), or ``None``.

    The order matters: a maybe-sent message is never re-sent whatever its error says."""
    if maybe_sent:
        return "maybe_sent"
    if not is_transient(error):
        return "not_transient"
    if replays >= max_redrives:
        return "exhausted"
    return None


@registry.task(queue=QUEUE, payload=ProcessFailedMessages, max_retries=1, timeout_s=300)
async def process_failed_messages(
    ctx: Context[HandlerState], payload: ProcessFailedMessages
) -> dict[str, Any]:
    since = utc_now(payload.now) - timedelta(hours=payload.lookback_hours)
    rows = await ctx.state.db.fetch(_CANDIDATES, since, payload.limit)
    tombstones: list[tuple[int, str, str]] = []
    by_job: dict[str, list[int]] = {}
    for r in rows:
        why = verdict(r["error"], r["maybe_sent"], r["replays"], payload.max_redrives)
        if why is None:
            by_job.setdefault(r["job_id"], []).append(r["id"])
        else:
            tombstones.append((r["id"], r["job_id"], why))
    dead: dict[str, list[str]] = {}  # queue -> job ids waiting in its dead-letter stream
    in_flight = 0
    for job_id, log_ids in by_job.items():
        try:
            status = await ctx.client.status(job_id)
        except JobNotFound:
            tombstones += [(i, job_id, "no_envelope") for i in log_ids]
            continue
        if status.state == "dead":
            dead.setdefault(status.queue, []).append(job_id)
        elif status.state in _IN_FLIGHT:
            in_flight += 1  # qrunner's own retries are on it; look again next run
        else:
            tombstones += [(i, job_id, "no_envelope") for i in log_ids]
    replayed = await _replay(ctx, dead)
    tombstones += [(i, job_id, "replayed") for job_id in replayed for i in by_job[job_id]]
    missing = {j for ids in dead.values() for j in ids} - replayed
    tombstones += [(i, job_id, "no_envelope") for job_id in missing for i in by_job[job_id]]
    if tombstones:
        await ctx.state.db.executemany(
            "INSERT INTO delivery_redrives (delivery_log_id, job_id, outcome) VALUES ($1, $2, $3)"
            " ON CONFLICT (delivery_log_id) DO NOTHING",
            tombstones,
        )
    if replayed:
        log.info("re-drove %d dead-lettered send(s) after transient failures", len(replayed))
    return {
        "examined": len(rows),
        "replayed": sorted(replayed),
        "in_flight": in_flight,
        **{
            outcome: sum(1 for t in tombstones if t[2] == outcome)
            for outcome in ("not_transient", "maybe_sent", "exhausted", "no_envelope")
        },
    }


async def _replay(ctx: Context[HandlerState], dead: dict[str, list[str]]) -> set[str]:
    """Replay the named jobs from their queues' dead-letter streams; returns those replayed.

    Uses qrunner's dead-letter module (not yet part of the public API): the envelope, which
    the delivery log does not keep, exists only there.
    """
    if not dead:
        return set()
    from qrunner import DeadLetters

    dlq = DeadLetters(ctx.redis, ctx.settings.status_ttl_s)
    done: set[str] = set()
    for queue, job_ids in dead.items():
        wanted = set(job_ids)
        found = [d async for d in dlq.iterate([queue]) if d.job is not None and d.job.id in wanted]
        for entry in found:
            assert entry.job is not None
            if entry.job.id not in done and await dlq.replay_one(entry):
                done.add(entry.job.id)
    return done
