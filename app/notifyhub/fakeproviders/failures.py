"""Scripted failures for the fake providers: a queue of rules, consumed one request at a time.

Tests need to say "the next two requests to this number get a 429" and then watch the code under
test recover; a FIFO of counted rules, optionally tied to one recipient, says exactly that and
nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FailureKind(StrEnum):
    """What the fake does instead of a clean success."""

    #: Refuse the recipient (Twilio 21211, Resend 422 validation_error). Nothing is recorded.
    INVALID_NUMBER = "invalid_number"
    #: Recipient opted out (Twilio 21610, Resend 422 validation_error). Nothing is recorded.
    UNSUBSCRIBED = "unsubscribed"
    #: 429 with a Retry-After header. Nothing is recorded.
    THROTTLED = "throttled"
    #: 500 returned before accepting. Nothing is recorded.
    SERVER_ERROR = "server_error"
    #: 503 returned before accepting. Nothing is recorded.
    UNAVAILABLE = "unavailable"
    #: The message IS accepted and recorded, then a 500 goes back.
    ERROR_AFTER_ACCEPT = "error_after_accept"
    #: The message IS accepted and recorded, then the response is held for ``hold_s``.
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"

    @property
    def after_accept(self) -> bool:
        return self in (FailureKind.ERROR_AFTER_ACCEPT, FailureKind.TIMEOUT_AFTER_ACCEPT)


@dataclass(slots=True)
class FailureRule:
    kind: FailureKind
    remaining: int
    match_to: str | None = None
    retry_after_s: int | None = 1
    hold_s: float = 30.0

    def matches(self, recipients: Sequence[str]) -> bool:
        return self.match_to is None or self.match_to in recipients


class FailureRequest(BaseModel):
    """Body of ``POST /_fake/failures``; the same fields as ``fail_next``."""

    model_config = ConfigDict(extra="forbid")

    kind: FailureKind
    count: int = Field(default=1, ge=1)
    match_to: str | None = None
    retry_after_s: int | None = Field(default=1, ge=0)
    hold_s: float = Field(default=30.0, gt=0)


class FailurePlan:
    """The FIFO of pending rules. The first rule matching a request's recipients wins."""

    def __init__(self) -> None:
        self._rules: list[FailureRule] = []

    def add(
        self,
        kind: FailureKind | str,
        count: int = 1,
        *,
        match_to: str | None = None,
        retry_after_s: int | None = 1,
        hold_s: float = 30.0,
    ) -> FailureRule:
        if count < 1:
            raise ValueError("count must be at least 1")
        rule = FailureRule(FailureKind(kind), count, match_to, retry_after_s, hold_s)
        self._rules.append(rule)
        return rule

    def take(self, recipients: Sequence[str]) -> FailureRule | None:
        """Consumes one use of the first rule that matches; ``None`` means behave normally."""
        for rule in self._rules:
            if rule.matches(recipients):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
                return rule
        return None

    def clear(self) -> None:
        self._rules.clear()

    def pending(self) -> list[dict[str, Any]]:
        return [asdict(rule) for rule in self._rules]
