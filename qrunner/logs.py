"""Logging: one line per record, as JSON (``QRUNNER_LOG_FORMAT=json``, through
python-json-logger, so quotes, newlines and control characters never break a line) or text.

Every record written while a job runs carries the job's ``job_id``, ``task``, ``queue`` and
``attempt``, whichever logger wrote it (the worker's, or the handler's own ``logging`` calls):
the worker binds them in a context variable for the job's task (and a ``run_in_thread``
handler's thread, which gets a copy of the context), and a filter on the handler copies them
onto each record. The text format shows them in brackets after the logger name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

#: The names of the running job's fields on a log record, in the order :data:`JOB_FIELDS` holds
#: their values.
JOB_FIELD_NAMES = ("job_id", "task", "queue", "attempt")
#: The running job's ``(job_id, task, queue, attempt)``, or None outside a job. A tuple, not a
#: dict: the worker sets it once per job, and logging reads it only when a record is written.
JOB_FIELDS: ContextVar[tuple[str, str, str, int] | None] = ContextVar(
    "qrunner_job_fields", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(job)s: %(message)s"


@contextmanager
def job_context(job_id: str, task: str, queue: str, attempt: int) -> Iterator[None]:
    """Tag every log record written inside the block (in this task or thread) with the job."""
    token = JOB_FIELDS.set((job_id, task, queue, attempt))
    try:
        yield
    finally:
        JOB_FIELDS.reset(token)


class JobContextFilter(logging.Filter):
    """Copies the running job's fields onto each record (``record.job_id`` ...), and sets
    ``record.job`` to `` [job_id=... task=... queue=... attempt=...]`` for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = JOB_FIELDS.get()
        if values:
            fields = tuple(zip(JOB_FIELD_NAMES, values, strict=True))
            for name, value in fields:
                if not hasattr(record, name):
                    setattr(record, name, value)
            record.job = " [" + " ".join(f"{k}={v}" for k, v in fields) + "]"
        else:
            record.job = ""
        return True


class JsonFormatter(_JsonFormatter):
    """``{"t", "level", "logger", "msg", "exc"?, "job_id"?, "task"?, "queue"?, "attempt"?}``;
    ``exc`` holds a traceback as one string."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "t",
                "levelname": "level",
                "name": "logger",
                "message": "msg",
                "exc_info": "exc",
                "stack_info": "stack",
            },
            reserved_attrs=[*_RESERVED, "job"],
        )


#: LogRecord attributes that are not extra fields (python-json-logger's own list plus ours).
_RESERVED = [
    "args",
    "created",
    "exc_text",
    "filename",
    "funcName",
    "levelno",
    "lineno",
    "module",
    "msecs",
    "msg",
    "pathname",
    "process",
    "processName",
    "relativeCreated",
    "thread",
    "threadName",
    "taskName",
    "exc_info",
    "stack_info",
    "asctime",
    "levelname",
    "name",
    "message",
]


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), job fields included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
