"""Every Redis key qrunner uses, in one place.

All keys of one queue share the hash tag ``{<queue>}`` so that multi-key scripts on one queue
work on Redis Cluster. Rate-limit buckets and cron slots are single-key operations with their
own tags.
"""

from __future__ import annotations

PREFIX = "qr"
GROUP = "workers"

#: Queues of the systems qrunner replaces, highest priority first.
DEFAULT_QUEUES: tuple[str, ...] = (
    "sms_critical",
    "sms_daily",
    "email_reports",
    "email_education",
    "daily_outlook",
    "reports",
    "default",
    "maintenance",
)


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
    """Status record of one job (JSON string with a TTL)."""
    return f"{PREFIX}:{{{queue}}}:job:{job_id}"


def id_marker(queue: str, job_id: str) -> str:
    """Marks a job id as enqueued when status records are off, so a retried enqueue is
    skipped (a short-lived string; with status records on, the record itself does this)."""
    return f"{PREFIX}:{{{queue}}}:id:{job_id}"


def stall_note(queue: str, job_id: str) -> str:
    """Why a job's worker ended: it blocked the event loop (written by the watchdog)."""
    return f"{PREFIX}:{{{queue}}}:stall:{job_id}"


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
