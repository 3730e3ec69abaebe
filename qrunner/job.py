"""The job envelope: what travels through the streams, the delayed set and the dead-letter stream.

Encoded with orjson, never pickle, so any language can read a queue and a malicious entry can at
worst be malformed, never execute code.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .errors import InvalidPayload

#: Fields kept per failed attempt, newest last. The history is capped so a job that fails
#: hundreds of times does not grow without bound.
MAX_ERROR_HISTORY = 20


def new_job_id() -> str:
    """16 lowercase base32 characters (80 random bits): unique enough, short enough to keep keys
    small, and never starting with '-' so it is safe as a command-line argument."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    type: str
    message: str
    attempt: int
    at_ms: int
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "attempt": self.attempt,
            "at_ms": self.at_ms,
            "traceback": self.traceback,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorRecord:
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            attempt=int(data.get("attempt", 0)),
            at_ms=int(data.get("at_ms", 0)),
            traceback=str(data.get("traceback", "")),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work. ``attempt`` is 1 on the first run and grows by one per failed run."""

    id: str
    task: str
    payload: dict[str, Any]
    queue: str
    attempt: int = 1
    enqueued_ms: int = 0
    not_before_ms: int = 0
    key: str | None = None
    errors: tuple[ErrorRecord, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "payload": self.payload,
            "queue": self.queue,
            "attempt": self.attempt,
            "enqueued_ms": self.enqueued_ms,
        }
        if self.not_before_ms:
            data["not_before_ms"] = self.not_before_ms
        if self.key is not None:
            data["key"] = self.key
        if self.errors:
            data["errors"] = [e.to_dict() for e in self.errors]
        try:
            return orjson.dumps(data)
        except TypeError as exc:
            raise InvalidPayload(
                f"payload of task {self.task!r} is not JSON-serialisable: {exc}"
            ) from exc

    @classmethod
    def decode(cls, raw: bytes | str) -> Job:
        """Parse an envelope; raises ``MalformedJob`` with the reason when it is not one."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedJob(f"entry is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MalformedJob("entry is not a JSON object")
        try:
            payload = data.get("payload") or {}
            if not isinstance(payload, dict):
                raise MalformedJob("payload is not a JSON object")
            return cls(
                id=str(data["id"]),
                task=str(data["task"]),
                payload=payload,
                queue=str(data["queue"]),
                attempt=int(data.get("attempt", 1)),
                enqueued_ms=int(data.get("enqueued_ms", 0)),
                not_before_ms=int(data.get("not_before_ms", 0)),
                key=data.get("key"),
                errors=tuple(ErrorRecord.from_dict(e) for e in data.get("errors") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedJob(f"entry lacks a valid field: {exc!r}") from exc

    def failed(self, record: ErrorRecord) -> Job:
        """The envelope for the next attempt: attempt + 1 and the error appended to the history."""
        history = (*self.errors, record)[-MAX_ERROR_HISTORY:]
        return replace(self, attempt=self.attempt + 1, errors=history)

    def with_error(self, record: ErrorRecord) -> Job:
        """The envelope with the error recorded, attempt unchanged (dead letter, deferral)."""
        history = (*self.errors, record)[-MAX_ERROR_HISTORY:]
        return replace(self, errors=history)


class MalformedJob(ValueError):
    """A stream entry that is not a valid envelope. It is dead-lettered with its raw bytes."""
