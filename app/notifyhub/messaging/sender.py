"""The path of every message from job to provider: one pipeline for SMS, email and push.

In order, for one message on one :class:`~.channels.Channel`:

1. load the recipient and judge compliance (consent, opt-out, suppression); a refusal is
   logged ``suppressed`` and the job succeeds: retrying cannot change the answer;
2. on channels with quiet hours (SMS), check them in the recipient's zone; inside them the job
   is deferred to the window's end with ``RateLimited`` (no attempt spent), never dropped;
3. render, then claim the effect-ledger key of (job, channel, template, recipient); a key
   already settled means an earlier run sent it and nothing is sent again;
4. under the shared consent lock, judge compliance once more and call the provider (or write
   the sandbox outbox when there are no credentials): the check a STOP must beat is the one
   right before the call (G8);
5. settle the ledger, log the outcome with its cost, and turn provider outcomes into job
   outcomes as the channel classifies them: throttled -> ``RateLimited``, transient ->
   ``Retry``, maybe-sent (SMS) -> success with status ``maybe_sent`` (never re-sent),
   permanent -> the channel's refusal handling (fallback channel) and ``Permanent``.

An email to a user takes a shorter road to the same guarantees (:mod:`.user_email`): steps 1, 3
and 4's lock and re-check are one statement, taken with the lock held until the provider
answered, and step 5 is one more; the provider outcomes are handled by the same code.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped]

from notifyhub.providers import (
    EmailResult,
    MaybeSent,
    PermanentProviderError,
    ProviderError,
    ProviderThrottled,
)
from qrunner import Context, Permanent, RateLimited, Retry

from . import delivery_log, user_email
from .channels import Channel, Delivery, Disposition, EmailChannel, Result, SmsChannel
from .consent import Verdict
from .delivery_log import LogEntry, mask
from .email_batch import Member
from .ledger import ClaimState, Ledger, idempotency_key
from .options import MessagingOptions
from .push_channel import PushChannel, deliver_to_devices
from .quiet_hours import Window, parse_window, quiet_wait_s, resolve_zones
from .recipients import Recipient, load_address, load_user, lock_consent_shared
from .templates import Templates
from .unsubscribe import Signer

if TYPE_CHECKING:
    from notifyhub.settings import AppSettings
    from notifyhub.state import HandlerState

__all__ = ["Sender"]

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")


class Record(Protocol):
    """Settles the message's ledger key as ``ledger_state`` and logs ``status`` with ``fields``
    (:class:`~.delivery_log.LogEntry` fields); every outcome after a claim ends in one call."""

    async def __call__(
        self, ledger_state: str, status: str, /, *, provider_id: str | None = None, **fields: Any
    ) -> None: ...


class Sender:
    """Runs the pipeline on the SMS, email and push channels; built once per process with the state
    (:class:`~.services.Messaging`)."""

    def __init__(self, options: MessagingOptions, templates: Templates, signer: Signer) -> None:
        self.options = options
        self.sms_channel = SmsChannel(options, templates, signer)
        self.email_channel = EmailChannel(options, templates, signer)
        self.push_channel = PushChannel(options, templates, signer)

    async def sms(self, ctx: Context[HandlerState], user_id: int, d: Delivery) -> Result:
        return await self.deliver(ctx, self.sms_channel, d, user_id=user_id)

    async def email(
        self,
        ctx: Context[HandlerState],
        d: Delivery,
        *,
        user_id: int | None = None,
        address: str | None = None,
        guest_name: str = "",
    ) -> Result:
        """To a user, or to a bare ``address`` (a guest's receipt)."""
        return await self.deliver(
            ctx, self.email_channel, d, user_id=user_id, address=address, guest_name=guest_name
        )

    async def push(self, ctx: Context[HandlerState], user_id: int, d: Delivery) -> Result:
        """To every device the user registered (:func:`.push_channel.deliver_to_devices`)."""
        return await deliver_to_devices(ctx, self, user_id, d)

    # -- the pipeline -----------------------------------------------------------------------

    async def deliver(
        self,
        ctx: Context[HandlerState],
        channel: Channel[M, R],
        d: Delivery,
        *,
        user_id: int | None = None,
        address: str | None = None,
        guest_name: str = "",
    ) -> Result:
        if user_id is not None and isinstance(channel, EmailChannel):
            result = await self._user_email(ctx, channel, d, user_id)
            if result is not None:
                return result
        async with ctx.state.db.acquire() as conn:
            r = await self._recipient(conn, user_id, address, guest_name)
            verdict = channel.verdict(r, d)
            if not verdict.allowed:
                return await self._suppress(conn, ctx, channel, r, d.template, verdict.reason)
            if channel.quiet_hours and not (
                d.quiet_exempt or d.spec.name in self.options.quiet_hours_exempt
            ):
                await self._quiet_hours(conn, ctx, channel, r, d.template)
            to = channel.address(r)
            assert to is not None  # the verdict refuses a recipient without one
            message = channel.render(ctx, r, d, to)
            key = idempotency_key(ctx.job.id, channel.name, d.template, to)
            ledger = Ledger(
                ctx.state.redis, self.options.ledger_ttl_s, self.options.sms_pending_stale_s
            )
            claim = await ledger.claim(
                conn,
                key,
                job_id=ctx.job.id,
                channel=channel.name,
                recipient=to,
                template=d.template,
            )
            if claim.state is ClaimState.DONE:
                return {"status": "duplicate", "ledger": claim.found}
            if claim.state is ClaimState.BUSY:
                raise RateLimited(
                    claim.retry_after_s, reason="another attempt of this job is sending"
                )
            outcome = await self._call(conn, ctx, channel, r, d, to, message, key)
            record = self._recorder(conn, ctx, channel, r, d.template, key, ledger)
            if outcome is None:
                # No provider call: captured in the sandbox outbox (no credentials).
                await record("sent", "sandbox", idempotency_key=key)
                return {"status": "sandbox"}
            if isinstance(outcome, Verdict):
                await record("failed", "suppressed", error=outcome.reason)
                return self._suppressed(channel, r, d.template, outcome.reason)
            return await self._settle(conn, ctx, channel, r, d, key, message, outcome, record)

    async def _user_email(
        self, ctx: Context[HandlerState], channel: EmailChannel, d: Delivery, user_id: int
    ) -> Result | None:
        """An email to a user in two statements shared with the sends started alongside it
        (:mod:`.user_email`, :mod:`.email_batch`); ``None`` leaves it to the generic pipeline
        (an address whose ledger key only the application can compute)."""
        batches = ctx.state.email_batches
        started, member = await batches.start(user_id, ctx.job.id, d.template)
        if started is None:
            raise Permanent(f"user {user_id} does not exist")
        if member is None:
            return {"status": "duplicate", "ledger": started.claim}
        try:
            return await self._user_email_locked(ctx, channel, d, started, member)
        finally:
            member.abandon()  # ends a send that raised: its lock goes, its claim stays pending

    async def _user_email_locked(
        self,
        ctx: Context[HandlerState],
        channel: EmailChannel,
        d: Delivery,
        started: user_email.Started,
        member: Member,
    ) -> Result | None:
        """The send once its lock is held, until a ``record`` call (or the member's
        :meth:`~.email_batch.Member.unlock`) ends it."""
        r, key = started.recipient, started.key

        async def record(
            ledger_state: str,
            status: str,
            /,
            *,
            provider_id: str | None = None,
            outbox: dict[str, Any] | None = None,
            **fields: Any,
        ) -> None:
            entry = self._entry(ctx, channel, r, d.template, status, **fields)
            await member.finish(
                entry,
                key=key,
                ledger_state=ledger_state if key is not None else None,
                provider_id=provider_id,
                outbox=outbox,
            )

        verdict = channel.verdict(r, d)
        if not verdict.allowed:
            await record("failed", "suppressed", error=verdict.reason)
            return self._suppressed(channel, r, d.template, verdict.reason)
        if key is None:
            member.unlock()
            return None
        to = channel.address(r)
        assert to is not None  # the verdict refuses a recipient without one
        message = channel.render(ctx, r, d, to)
        if not channel.configured(ctx.state):
            outbox = channel.outbox_fields(to, message)
            await record("sent", "sandbox", outbox=outbox, idempotency_key=key)
            return {"status": "sandbox"}
        outcome: EmailResult | ProviderError
        try:
            outcome = await channel.send(ctx.state, to, message, key)
        except ProviderError as exc:
            outcome = exc
        # The batch's connection is not this send's: what a refusal writes goes through the
        # pool (the email channel's refusal only enqueues the fallback SMS).
        db = ctx.state.db
        return await self._settle(db, ctx, channel, r, d, key, message, outcome, record)

    @staticmethod
    async def _recipient(
        conn: asyncpg.Connection, user_id: int | None, address: str | None, guest_name: str
    ) -> Recipient:
        if user_id is None:
            assert address is not None
            return await load_address(conn, address, guest_name)
        r = await load_user(conn, user_id)
        if r is None:
            raise Permanent(f"user {user_id} does not exist")
        return r

    @staticmethod
    async def _call(
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[M, R],
        r: Recipient,
        d: Delivery,
        to: str,
        message: M,
        key: str,
    ) -> R | ProviderError | Verdict | None:
        """Judges compliance once more under the shared consent lock, held until the provider
        answers, then sends (or keeps the message in the sandbox outbox: ``None``)."""
        async with conn.transaction():
            if r.user_id is not None:
                await lock_consent_shared(conn, r.user_id, channel.name)
                fresh = await load_user(conn, r.user_id)
            else:
                fresh = await load_address(conn, to)
            verdict = channel.verdict(fresh, d) if fresh else Verdict(False, "user deleted")
            if not verdict.allowed:
                return verdict
            if not channel.configured(ctx.state):
                await channel.to_sandbox(conn, ctx.job.id, to, message)
                return None
            try:
                return await channel.send(ctx.state, to, message, key)
            except ProviderError as exc:
                return exc

    def _recorder(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[Any, Any],
        r: Recipient,
        template: str,
        key: str,
        ledger: Ledger,
    ) -> Record:
        """The generic pipeline's :class:`Record`: the ledger settle, then the log row."""

        async def record(
            ledger_state: str, status: str, /, *, provider_id: str | None = None, **fields: Any
        ) -> None:
            await ledger.settle(conn, key, ledger_state, provider_id)
            await self._log(conn, ctx, channel, r, template, status, **fields)

        return record

    async def _settle(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[M, R],
        r: Recipient,
        d: Delivery,
        key: str,
        message: M,
        outcome: R | ProviderError,
        record: Record,
    ) -> Result:
        """Records what the provider answered and turns it into the job's outcome."""
        if not isinstance(outcome, ProviderError):
            sent = channel.sent(outcome, message)
            await record(
                "sent",
                "sent",
                provider_id=sent.message_id,
                provider_message_id=sent.message_id,
                idempotency_key=key,
                **sent.log_fields,
            )
            return sent.result
        return await self._failed(conn, ctx, channel, r, d, key, message, outcome, record)

    async def _failed(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[M, R],
        r: Recipient,
        d: Delivery,
        key: str,
        message: M,
        error: ProviderError,
        record: Record,
    ) -> Result:
        t, provider = d.template, channel.provider
        disposition = channel.classify(error)
        if disposition is Disposition.MAYBE_SENT:
            assert isinstance(error, MaybeSent)
            await record(
                "maybe_sent",
                "maybe_sent",
                error=error.reason,
                idempotency_key=key,
                **channel.maybe_sent_fields(message),
            )
            log.warning(
                "%s %s to %s may have been sent (%s); not re-sending",
                channel.name,
                t,
                mask(channel.name, channel.address(r)),
                error.reason,
            )
            return {"status": "maybe_sent"}
        if disposition is Disposition.THROTTLED:
            assert isinstance(error, ProviderThrottled)
            await record("failed", "deferred", error=str(error))
            raise RateLimited(error.retry_after_s, bucket=provider, reason=f"{provider} throttled")
        await record("failed", "failed", error=str(error), idempotency_key=key)
        if disposition is Disposition.RETRY:
            raise Retry(self._backoff_s(d, ctx.job.attempt), reason=f"{provider}: {error}")
        assert isinstance(error, PermanentProviderError)
        result = await channel.refused(conn, ctx, r, d, message, error)
        if result is not None:
            return result
        raise Permanent(f"{provider} refused the {channel.name} ({error.code})")

    # -- helpers ----------------------------------------------------------------------------

    def _backoff_s(self, d: Delivery, attempt: int) -> float:
        return d.spec.backoff_s(attempt) * self.options.backoff_scale

    def _window(self, settings: AppSettings, r: Recipient) -> Window:
        if r.quiet_start is not None and r.quiet_end is not None:
            return Window(r.quiet_start, r.quiet_end)
        return parse_window(settings.quiet_hours)

    async def _quiet_hours(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[Any, Any],
        r: Recipient,
        template: str,
    ) -> None:
        zones = resolve_zones(r.time_zone, r.country, r.phone)
        wait = quiet_wait_s(self.options.clock(), self._window(ctx.state.settings, r), zones)
        if wait <= 0:
            return
        await self._log(
            conn,
            ctx,
            channel,
            r,
            template,
            "deferred",
            error=f"quiet hours ({zones.basis}) for {wait:.0f}s",
        )
        log.info(
            "deferred %s %s to %s by %.0fs: quiet hours in %s",
            channel.name,
            template,
            mask(channel.name, channel.address(r)),
            wait,
            zones.basis,
        )
        cap = self.options.quiet_defer_cap_s
        raise RateLimited(min(wait, cap) if cap else wait, reason="quiet hours")

    async def _log(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[Any, Any],
        r: Recipient,
        template: str,
        status: str,
        **fields: Any,
    ) -> None:
        await delivery_log.record(conn, self._entry(ctx, channel, r, template, status, **fields))

    @staticmethod
    def _entry(
        ctx: Context[HandlerState],
        channel: Channel[Any, Any],
        r: Recipient,
        template: str,
        status: str,
        **fields: Any,
    ) -> LogEntry:
        provider = "sandbox" if status == "sandbox" else channel.provider
        return LogEntry(
            ctx.job.id,
            r.user_id,
            channel.name,
            template,
            channel.address(r),
            provider,
            status,
            **fields,
        )

    async def _suppress(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        channel: Channel[Any, Any],
        r: Recipient,
        template: str,
        reason: str,
    ) -> Result:
        await self._log(conn, ctx, channel, r, template, "suppressed", error=reason)
        return self._suppressed(channel, r, template, reason)

    @staticmethod
    def _suppressed(channel: Channel[Any, Any], r: Recipient, template: str, reason: str) -> Result:
        recipient = mask(channel.name, channel.address(r))
        log.info("suppressed %s %s to %s: %s", channel.name, template, recipient, reason)
        return {"status": "suppressed", "reason": reason}
