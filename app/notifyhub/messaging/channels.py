"""SMS and email behind one interface: what differs between the two channels.

The sender (:mod:`.sender`) runs one pipeline for every message: compliance check -> ledger
claim -> provider call (or the sandbox outbox) -> settle. A :class:`Channel` supplies the parts
that differ:

- the recipient's address on the channel and the consent and suppression rule that judges it
  (:mod:`.consent`); the consent lock and the ledger key are per channel name;
- whether quiet hours apply: they do for SMS (a text at 23:00 wakes people), not for email;
- rendering: email adds a signed unsubscribe link and the RFC 8058 ``List-Unsubscribe`` headers;
- the provider call and the sandbox copy (when the channel has no credentials);
- how a provider error is classified (:meth:`Channel.classify`): an SMS whose outcome is unknown
  is settled as maybe-sent and never re-sent, because a duplicate reaches a phone and costs
  money; an email in the same state is retried under the same Idempotency-Key, which the
  provider deduplicates;
- what a sent message records (segments and cost for SMS) and what a refusal does: SMS records a
  carrier opt-out; each channel falls back to the other when the task asks for it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]

from notifyhub.providers import (
    EmailResult,
    MaybeSent,
    PermanentProviderError,
    ProviderError,
    ProviderThrottled,
    SmsResult,
)
from notifyhub.providers.email import EmailMessage
from notifyhub.providers.sms import segments
from qrunner import Context

from . import delivery_log
from .catalog import TaskSpec
from .consent import Category, Verdict, email_verdict, sms_verdict
from .delivery_log import mask
from .formatting import Formatter, normalize_locale
from .options import MessagingOptions
from .quiet_hours import resolve_zones
from .recipients import Recipient, record_opt_out
from .templates import Templates
from .unsubscribe import Signer, Subject

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

log = logging.getLogger(__name__)

Result = dict[str, Any]
#: What a channel renders and hands its provider.
M = TypeVar("M")
#: What its provider answers when it accepts the message.
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a task asks the sender to deliver."""

    spec: TaskSpec
    template: str
    context: Mapping[str, Any]
    #: Template file to render when it differs from ``template`` (the ledger/log label).
    render: str | None = None
    fallback: bool = False
    quiet_exempt: bool = False
    category: Category = Category.TRANSACTIONAL
    #: SMS text for the email -> SMS fallback; default: the email's subject.
    fallback_sms: str | None = None


class Disposition(Enum):
    """What a provider error means for the job."""

    #: A :class:`~notifyhub.providers.MaybeSent` the channel must not repeat: the request left
    #: and no clear answer came back, so it is settled as maybe-sent and never re-sent.
    MAYBE_SENT = "maybe_sent"
    #: The provider said "not now": wait as long as it asked, without spending an attempt.
    THROTTLED = "throttled"
    #: Nothing was sent, or a repeat is deduplicated: retry after the task's backoff.
    RETRY = "retry"
    #: Refused for good: the channel's refusal handling, then a permanent failure.
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Sent:
    """How an accepted message is recorded: ledger id, job result, extra delivery-log fields."""

    message_id: str
    result: Result
    log_fields: Mapping[str, Any] = field(default_factory=dict)


class Channel(ABC, Generic[M, R]):
    #: The channel's name in the ledger, the consent tables, the locks and the delivery log.
    name: ClassVar[str]
    #: The provider's name in the delivery log, rate-limit buckets and job errors.
    provider: ClassVar[str]
    #: Whether a message waits for the end of the recipient's quiet hours.
    quiet_hours: ClassVar[bool] = False

    def __init__(self, options: MessagingOptions, templates: Templates, signer: Signer) -> None:
        self.options = options
        self.templates = templates
        self.signer = signer

    def base_context(self, r: Recipient) -> dict[str, Any]:
        """What every template may use besides the task's own context."""
        zones = resolve_zones(r.time_zone, r.country, r.phone)
        locale = normalize_locale(r.locale)
        return {
            "name": r.first_name,
            "app_name": self.options.app_name,
            "support_email": self.options.support_email,
            "fmt": Formatter(locale, zones.primary),
            "lang": locale[:2],
        }

    @abstractmethod
    def address(self, r: Recipient) -> str | None:
        """The recipient's address on this channel, if any."""

    @abstractmethod
    def verdict(self, r: Recipient, d: Delivery) -> Verdict:
        """Whether ``r`` may get ``d`` on this channel (consent, opt-out, suppression)."""

    @abstractmethod
    def render(self, ctx: Context[HandlerState], r: Recipient, d: Delivery, address: str) -> M:
        """The message; the same job must render the same bytes on every attempt."""

    @abstractmethod
    def configured(self, state: HandlerState) -> bool:
        """Whether the provider has credentials; without them messages go to the sandbox."""

    @abstractmethod
    async def send(self, state: HandlerState, address: str, message: M, key: str) -> R:
        """Calls the provider; raises a :class:`~notifyhub.providers.ProviderError`."""

    @abstractmethod
    async def to_sandbox(
        self, conn: asyncpg.Connection, job_id: str, address: str, message: M
    ) -> None:
        """Keeps the message in the sandbox outbox instead of sending it."""

    @abstractmethod
    def sent(self, result: R, message: M) -> Sent:
        """How a message the provider accepted is recorded."""

    def classify(self, error: ProviderError) -> Disposition:
        if isinstance(error, ProviderThrottled):
            return Disposition.THROTTLED
        if isinstance(error, PermanentProviderError):
            return Disposition.REFUSED
        return Disposition.RETRY

    def maybe_sent_fields(self, message: M) -> Mapping[str, Any]:
        """Delivery-log fields of a message that may have been sent."""
        return {}

    async def refused(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        d: Delivery,
        message: M,
        error: PermanentProviderError,
    ) -> Result | None:
        """Acts on a permanent refusal; a result ends the job as succeeded, ``None`` fails it."""
        return None


class SmsChannel(Channel[str, SmsResult]):
    name = "sms"
    provider = "twilio"
    quiet_hours = True

    def address(self, r: Recipient) -> str | None:
        return r.phone

    def verdict(self, r: Recipient, d: Delivery) -> Verdict:
        return sms_verdict(has_phone=bool(r.phone), consent=r.sms, suppressed=r.sms_suppressed)

    def render(self, ctx: Context[HandlerState], r: Recipient, d: Delivery, address: str) -> str:
        return self.templates.sms(d.render or d.template, **{**self.base_context(r), **d.context})

    def configured(self, state: HandlerState) -> bool:
        return state.sms is not None

    async def send(self, state: HandlerState, address: str, message: str, key: str) -> SmsResult:
        assert state.sms is not None
        # Twilio reports the final status here; the key finds the message even when this call's
        # reply is lost (a maybe-sent SMS has no SID of its own; see messaging/webhooks.py).
        callback = (
            f"{state.settings.public_url.rstrip('/')}/hooks/twilio/status?key={quote(key, safe='')}"
        )
        return await state.sms.send(
            address,
            message,
            from_=state.settings.twilio_from_number or "",
            status_callback=callback,
        )

    async def to_sandbox(
        self, conn: asyncpg.Connection, job_id: str, address: str, message: str
    ) -> None:
        await delivery_log.to_sandbox(
            conn, channel="sms", recipient=address, body=message, job_id=job_id
        )

    def classify(self, error: ProviderError) -> Disposition:
        # Re-sending could text the person twice; the outcome is recorded and left alone.
        if isinstance(error, MaybeSent):
            return Disposition.MAYBE_SENT
        return super().classify(error)

    def _cost(self, result: SmsResult | None, body: str) -> dict[str, Any]:
        count = result.segments if result is not None else segments(body)
        if result is not None and result.price is not None:
            cost, currency = abs(result.price), (result.price_unit or "USD").upper()
        else:
            cost = count * self.options.sms_price_per_segment
            currency = self.options.sms_price_currency
        return {"segments": count, "cost": cost, "currency": currency}

    def sent(self, result: SmsResult, message: str) -> Sent:
        fields = self._cost(result, message)
        return Sent(
            result.sid,
            {"status": "sent", "sid": result.sid, "segments": fields["segments"]},
            fields,
        )

    def maybe_sent_fields(self, message: str) -> Mapping[str, Any]:
        return self._cost(None, message)

    async def refused(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        d: Delivery,
        message: str,
        error: PermanentProviderError,
    ) -> Result | None:
        if error.opted_out and r.user_id is not None:
            await self._record_carrier_opt_out(conn, r)
        if d.fallback and r.user_id is not None:
            await ctx.client.enqueue(
                "send_email",
                {
                    "user_id": r.user_id,
                    "subject": f"{self.options.app_name}: important alert",
                    "body": message,
                    "template": "sms_fallback",
                    "category": Category.TRANSACTIONAL.value,
                    "urgent": False,
                },
                key=f"fallback-{ctx.job.id}-email",
            )
            log.info("sms to %s failed permanently; falling back to email", mask("sms", r.phone))
        return {"status": "opted_out"} if error.opted_out else None

    @staticmethod
    async def _record_carrier_opt_out(conn: asyncpg.Connection, r: Recipient) -> None:
        assert r.user_id is not None and r.phone is not None
        async with conn.transaction():
            await record_opt_out(conn, r.user_id, "sms", "twilio_21610")
            await conn.execute(
                """
                INSERT INTO suppressions (channel, recipient, reason, source)
                VALUES ('sms', $1, 'stop', 'twilio_21610') ON CONFLICT DO NOTHING
                """,
                r.phone,
            )


class EmailChannel(Channel[EmailMessage, EmailResult]):
    name = "email"
    provider = "resend"

    def address(self, r: Recipient) -> str | None:
        return r.email

    def verdict(self, r: Recipient, d: Delivery) -> Verdict:
        return email_verdict(
            category=d.category,
            country=r.country,
            has_address=bool(r.email),
            consent=r.email_consent,
            suppressed=r.email_suppressed,
        )

    def render(
        self, ctx: Context[HandlerState], r: Recipient, d: Delivery, address: str
    ) -> EmailMessage:
        settings = ctx.state.settings
        subject = Subject(user_id=r.user_id) if r.user_id is not None else Subject(address=address)
        unsubscribe = self.signer.url(settings, subject)
        context = {**self.base_context(r), **d.context, "unsubscribe_url": unsubscribe}
        rendered = self.templates.email(d.render or d.template, **context)
        return EmailMessage(
            from_=settings.email_from,
            to=(address,),
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            headers={
                "List-Unsubscribe": f"<{unsubscribe}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            tags={"template": d.template},
        )

    def configured(self, state: HandlerState) -> bool:
        return state.email is not None

    async def send(
        self, state: HandlerState, address: str, message: EmailMessage, key: str
    ) -> EmailResult:
        assert state.email is not None
        # The same key on every attempt: the provider answers a repeat with the first result.
        return await state.email.send(message, idempotency_key=key)

    async def to_sandbox(
        self, conn: asyncpg.Connection, job_id: str, address: str, message: EmailMessage
    ) -> None:
        await delivery_log.to_sandbox(
            conn, channel="email", job_id=job_id, **self.outbox_fields(address, message)
        )

    @staticmethod
    def outbox_fields(address: str, message: EmailMessage) -> dict[str, Any]:
        """The sandbox outbox row of ``message`` (less channel and job)."""
        return {
            "recipient": address,
            "subject": message.subject,
            "body": message.text or "",
            "html": message.html,
            "headers": dict(message.headers),
        }

    def sent(self, result: EmailResult, message: EmailMessage) -> Sent:
        return Sent(result.id, {"status": "sent", "id": result.id})

    async def refused(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        d: Delivery,
        message: EmailMessage,
        error: PermanentProviderError,
    ) -> Result | None:
        if d.fallback and r.user_id is not None:
            text = d.fallback_sms or f"{self.options.app_name}: {message.subject}"
            await ctx.client.enqueue(
                "send_sms",
                {"user_id": r.user_id, "body": text, "template": f"{d.template}_fallback"},
                key=f"fallback-{ctx.job.id}-sms",
            )
            log.info("email to %s failed permanently; falling back to sms", mask("email", r.email))
        return None
