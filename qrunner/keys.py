"""Every Redis key qrunner uses, in one place.

All keys of one queue share the hash tag ``{<queue>}`` so that multi-key scripts on one queue
work on Redis Cluster. Rate-limit buckets and cron slots are single-key operations with their
own tags.
"""

from __future__ import annotations

PREFIX = "qr"
GROUP = "workers"


def stream(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:stream"


def delayed(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:delayed"


def dlq(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:dlq"


def uniq(queue: str, key: str) -> str:
    return f"{PREFIX}:{{{queue}}}:uniq:{key}"


def uniq_prefix(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:uniq:"


def job(queue: str, job_id: str) -> str:
    """Status hash of one job, with a TTL. A job that succeeded at its first try with nothing
    else recorded has none: its compact record is a field of :func:`done` (older versions kept
    it here as a string, which is still read)."""
    return f"{PREFIX}:{{{queue}}}:job:{job_id}"


#: How long a marker keeps a job id known when status records are off (see id_marker).
ID_MARKER_TTL_MS = 120_000


def id_marker(queue: str, job_id: str) -> str:
    """Marks a job id as enqueued when status records are off, so a retried enqueue is
    skipped (a short-lived string; with status records on, the record itself does this)."""
    return f"{PREFIX}:{{{queue}}}:id:{job_id}"


def stall_note(queue: str, job_id: str) -> str:
    """Why a job's worker ended: it blocked the event loop (written by the watchdog)."""
    return f"{PREFIX}:{{{queue}}}:stall:{job_id}"


def live(queue: str) -> str:
    """The queue's live index: job id -> stream entry id of each job waiting in or taken from
    the stream (status records on). A hash with no TTL: fields leave with their entries. The
    entry ids are packed (see :func:`live_entry_id`)."""
    return f"{PREFIX}:{{{queue}}}:live"


def done(queue: str) -> str:
    """The queue's done hash: job id -> the compact status record of a job that succeeded at
    its first try with nothing else recorded (see ``lua/ack.lua``). No TTL of its own: each
    record leaves once the result TTL has passed, through :func:`done_log`."""
    return f"{PREFIX}:{{{queue}}}:done"


def done_log(queue: str) -> str:
    """A list, oldest first, of ``<finished ms>\t<job id>\t<job id>...``: one entry per ack call
    that wrote done records, read to remove them when their TTL has passed."""
    return f"{PREFIX}:{{{queue}}}:done:log"


def live_entry_id(value: bytes | str) -> str:
    """The stream entry id a value of the live index stands for. The scripts pack
    ``<ms>-<seq>`` as the ms in 11 hex digits followed by the seq in hex, which fits Redis'
    16-byte allocation where the decimal form took 24; a value with a '-' is an entry id kept
    as it is (one that does not pack, or one written before values were packed)."""
    text = value.decode() if isinstance(value, bytes) else value
    if "-" in text:
        return text
    return f"{int(text[:11], 16)}-{int(text[11:], 16)}"


def job_prefix(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:job:"


def consumers(queue: str) -> str:
    """Hash consumer name -> last heartbeat (ms, Redis clock)."""
    return f"{PREFIX}:{{{queue}}}:consumers"


def job_index(job_id: str) -> str:
    """Which queue a job id lives in (small string with the status TTL)."""
    return f"{PREFIX}:jobq:{job_id}"


def queues_set() -> str:
    """Set of every queue name ever enqueued to, for stats and the CLI."""
    return f"{PREFIX}:queues"


def ratelimit(bucket: str, window: str) -> str:
    return f"{PREFIX}:rl:{{{bucket}}}:{window}"


def ratelimit_block(bucket: str) -> str:
    return f"{PREFIX}:rl:{{{bucket}}}:block"


def cron_last(schedule: str) -> str:
    return f"{PREFIX}:cron:{{{schedule}}}:last"


def cron_slot(schedule: str, slot_ms: int) -> str:
    return f"{PREFIX}:cron:{{{schedule}}}:{slot_ms}"


def alarms() -> str:
    """Stream of operational alarms (vanished streams/groups, ...), capped."""
    return f"{PREFIX}:alarms"


def fair_ring(queue: str) -> str:
    """List of the fairness keys of a queue that have parked jobs, in serving order."""
    return f"{PREFIX}:{{{queue}}}:fair:ring"


def fair_jobs(queue: str, fair_key: str) -> str:
    """List of one fairness key's parked envelopes, oldest first."""
    return f"{PREFIX}:{{{queue}}}:fair:k:{fair_key}"


def fair_jobs_prefix(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:fair:k:"


def fair_backlog(queue: str) -> str:
    """How many undelivered entries the queue's stream may hold before parked fair jobs wait
    (set by the workers that read the queue)."""
    return f"{PREFIX}:{{{queue}}}:fair:backlog"


def group(group_id: str) -> str:
    """Hash of one job group (callback spec, member order, counters), under its own tag:
    members may live in different queues, so in different cluster slots."""
    return f"{PREFIX}:grp:{{{group_id}}}"


def group_members(group_id: str) -> str:
    """Set of the group's member job ids (its size is the group's total)."""
    return f"{PREFIX}:grp:{{{group_id}}}:members"


def group_done(group_id: str) -> str:
    """Set of the member job ids whose completion has been counted (makes counting idempotent)."""
    return f"{PREFIX}:grp:{{{group_id}}}:done"


def group_results(group_id: str) -> str:
    """Hash member job id -> its outcome (state and result) as JSON."""
    return f"{PREFIX}:grp:{{{group_id}}}:results"


# -- operator control (qrunner.control): one hash tag, so every control key is on one slot ----

CONTROL = f"{PREFIX}:{{ctl}}"


def workers_set() -> str:
    """Set of worker names that announced themselves (entries expire with their record)."""
    return f"{CONTROL}:workers"


def worker_record(name: str) -> str:
    """One worker's presence record (JSON: host, pid, queues, running jobs), short TTL."""
    return f"{CONTROL}:worker:{name}"


def paused_queues() -> str:
    """Set of queue names no worker reads (``qrunner pause``); survives restarts."""
    return f"{CONTROL}:paused"


def cancel_requests() -> str:
    """Hash job id -> "<queue>\\t<requested ms>": jobs an operator cancelled."""
    return f"{CONTROL}:cancel"


def paused_schedules() -> str:
    """Set of schedule names the cron loop skips (``qrunner schedules pause``)."""
    return f"{CONTROL}:cron-paused"


def rate_overrides() -> str:
    """Hash task -> rates ("10/s,200/day"): rate limits set at run time."""
    return f"{CONTROL}:limits"


def audit_log() -> str:
    """Stream of operator actions (capped), for the dashboard and post-mortems."""
    return f"{CONTROL}:audit"


def action_counts() -> str:
    """Hash action -> count of operator actions (exported as qrunner_operator_actions_total)."""
    return f"{CONTROL}:actions"


def job_history(queue: str, job_id: str) -> str:
    """List of a job's finished attempts (JSON each), written when an attempt does not simply
    succeed first time; expires with the status record."""
    return f"{PREFIX}:{{{queue}}}:hist:{job_id}"
