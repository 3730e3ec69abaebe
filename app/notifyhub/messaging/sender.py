"""The path of every message from job to provider, shared by all SMS and email tasks.

In order, for one message:

1. load the recipient and judge compliance (consent, opt-out, suppression); a refusal is
   logged ``suppressed`` and the job succeeds: retrying cannot change the answer;
2. SMS only: quiet hours in the recipient's zone; inside them the job is deferred to the
   window's end with ``RateLimited`` (no attempt spent), never dropped;
3. render, then claim the effect-ledger key of (job, recipient, template); a key already
   settled means an earlier run sent it and nothing is sent again;
4. under the shared consent lock, judge compliance once more and call the provider (or write
   the sandbox outbox when there are no credentials): the check a STOP must beat is the one
   right before the call (G8);
5. settle the ledger, log the outcome with its cost, and turn provider outcomes into job
   outcomes: throttled -> ``RateLimited``, transient -> ``Retry``, maybe-sent -> success with
   status ``maybe_sent`` (never re-sent), permanent -> fallback channel and ``Permanent``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

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
from notifyhub.state import HandlerState
from qrunner import Context, Permanent, RateLimited, Retry

from ..settings import AppSettings
from . import delivery_log
from .catalog import TaskSpec
from .consent import Category, Verdict, email_verdict, sms_verdict
from .delivery_log import LogEntry, mask
from .formatting import Formatter, normalize_locale
from .ledger import Claim, ClaimState, Ledger, idempotency_key
from .options import MessagingOptions
from .quiet_hours import Window, parse_window, quiet_wait_s, resolve_zones
from .recipients import (
    Recipient,
    load_address,
    load_user,
    lock_consent_shared,
    record_opt_out,
)
from .templates import RenderedEmail, Templates
from .unsubscribe import Signer, Subject

log = logging.getLogger(__name__)

Result = dict[str, Any]


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


def _sms_verdict(r: Recipient) -> Verdict:
    return sms_verdict(has_phone=bool(r.phone), consent=r.sms, suppressed=r.sms_suppressed)


def _email_verdict(r: Recipient, category: Category) -> Verdict:
    return email_verdict(
        category=category,
        country=r.country,
        has_address=bool(r.email),
        consent=r.email_consent,
        suppressed=r.email_suppressed,
    )


class Sender:
    def __init__(self, options: MessagingOptions, templates: Templates, signer: Signer) -> None:
        self.options = options
        self.templates = templates
        self.signer = signer

    # -- shared helpers ---------------------------------------------------------------------

    def _ledger(self, ctx: Context[HandlerState]) -> Ledger:
        return Ledger(ctx.state.redis, self.options.ledger_ttl_s, self.options.sms_pending_stale_s)

    def base_context(self, r: Recipient) -> dict[str, Any]:
        zones = resolve_zones(r.time_zone, r.country, r.phone)
        locale = normalize_locale(r.locale)
        return {
            "name": r.first_name,
            "app_name": self.options.app_name,
            "support_email": self.options.support_email,
            "fmt": Formatter(locale, zones.primary),
            "lang": locale[:2],
        }

    def _window(self, settings: AppSettings, r: Recipient) -> Window:
        if r.quiet_start is not None and r.quiet_end is not None:
            return Window(r.quiet_start, r.quiet_end)
        return parse_window(settings.quiet_hours)

    def _backoff_s(self, spec: TaskSpec, attempt: int) -> float:
        delay: float = min(spec.backoff_cap_s, spec.backoff_base_s * 2.0 ** max(0, attempt - 1))
        return delay * self.options.backoff_scale

    async def _log(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        channel: str,
        template: str,
        status: str,
        **fields: Any,
    ) -> None:
        recipient = r.phone if channel == "sms" else r.email
        provider = {"sms": "twilio", "email": "resend"}[channel]
        if status == "sandbox":
            provider = "sandbox"
        await delivery_log.record(
            conn,
            LogEntry(
                ctx.job.id, r.user_id, channel, template, recipient, provider, status, **fields
            ),
        )

    async def _suppress(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        channel: str,
        template: str,
        reason: str,
    ) -> Result:
        await self._log(conn, ctx, r, channel, template, "suppressed", error=reason)
        recipient = mask(channel, r.phone if channel == "sms" else r.email)
        log.info("suppressed %s %s to %s: %s", channel, template, recipient, reason)
        return {"status": "suppressed", "reason": reason}

    @staticmethod
    def _claimed(claim: Claim) -> Result | None:
        if claim.state is ClaimState.DONE:
            return {"status": "duplicate", "ledger": claim.found}
        if claim.state is ClaimState.BUSY:
            raise RateLimited(claim.retry_after_s, reason="another attempt of this job is sending")
        return None

    # -- SMS --------------------------------------------------------------------------------

    async def sms(self, ctx: Context[HandlerState], user_id: int, d: Delivery) -> Result:
        async with ctx.state.db.acquire() as conn:
            r = await load_user(conn, user_id)
            if r is None:
                raise Permanent(f"user {user_id} does not exist")
            verdict = _sms_verdict(r)
            if not verdict.allowed:
                return await self._suppress(conn, ctx, r, "sms", d.template, verdict.reason)
            if not (d.quiet_exempt or d.spec.name in self.options.quiet_hours_exempt):
                await self._quiet_hours(conn, ctx, r, d.template)
            assert r.phone is not None
            body = self.templates.sms(
                d.render or d.template, **{**self.base_context(r), **d.context}
            )
            key = idempotency_key(ctx.job.id, "sms", d.template, r.phone)
            ledger = self._ledger(ctx)
            claim = await ledger.claim(
                conn, key, job_id=ctx.job.id, channel="sms", recipient=r.phone, template=d.template
            )
            if (done := self._claimed(claim)) is not None:
                return done
            outcome: SmsResult | ProviderError | Verdict | None = None
            async with conn.transaction():
                await lock_consent_shared(conn, user_id, "sms")
                fresh = await load_user(conn, user_id)
                verdict = (
                    _sms_verdict(fresh) if fresh is not None else Verdict(False, "user deleted")
                )
                if not verdict.allowed:
                    outcome = verdict
                elif ctx.state.sms is None:
                    await delivery_log.to_sandbox(
                        conn, channel="sms", recipient=r.phone, body=body, job_id=ctx.job.id
                    )
                else:
                    try:
                        outcome = await ctx.state.sms.send(
                            r.phone, body, from_=ctx.state.settings.twilio_from_number or ""
                        )
                    except ProviderError as exc:
                        outcome = exc
            return await self._settle_sms(conn, ctx, r, d, key, ledger, body, outcome)

    async def _quiet_hours(
        self, conn: asyncpg.Connection, ctx: Context[HandlerState], r: Recipient, template: str
    ) -> None:
        zones = resolve_zones(r.time_zone, r.country, r.phone)
        wait = quiet_wait_s(self.options.clock(), self._window(ctx.state.settings, r), zones)
        if wait <= 0:
            return
        await self._log(
            conn,
            ctx,
            r,
            "sms",
            template,
            "deferred",
            error=f"quiet hours ({zones.basis}) for {wait:.0f}s",
        )
        log.info(
            "deferred sms %s to %s by %.0fs: quiet hours in %s",
            template,
            mask("sms", r.phone),
            wait,
            zones.basis,
        )
        cap = self.options.quiet_defer_cap_s
        raise RateLimited(min(wait, cap) if cap else wait, reason="quiet hours")

    def _cost(self, result: SmsResult | None, body: str) -> tuple[int, Decimal, str]:
        count = result.segments if result is not None else segments(body)
        if result is not None and result.price is not None:
            return count, abs(result.price), (result.price_unit or "USD").upper()
        return count, count * self.options.sms_price_per_segment, self.options.sms_price_currency

    async def _settle_sms(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        d: Delivery,
        key: str,
        ledger: Ledger,
        body: str,
        outcome: SmsResult | ProviderError | Verdict | None,
    ) -> Result:
        t = d.template
        if isinstance(outcome, Verdict) or outcome is None:
            return await self._settle_unsent(conn, ctx, r, "sms", t, key, ledger, outcome)
        if isinstance(outcome, SmsResult):
            count, cost, currency = self._cost(outcome, body)
            await ledger.settle(conn, key, "sent", outcome.sid)
            await self._log(
                conn,
                ctx,
                r,
                "sms",
                t,
                "sent",
                provider_message_id=outcome.sid,
                segments=count,
                cost=cost,
                currency=currency,
                idempotency_key=key,
            )
            return {"status": "sent", "sid": outcome.sid, "segments": count}
        if isinstance(outcome, MaybeSent):
            count, cost, currency = self._cost(None, body)
            await ledger.settle(conn, key, "maybe_sent")
            await self._log(
                conn,
                ctx,
                r,
                "sms",
                t,
                "maybe_sent",
                segments=count,
                cost=cost,
                currency=currency,
                error=outcome.reason,
                idempotency_key=key,
            )
            log.warning(
                "sms %s to %s may have been sent (%s); not re-sending",
                t,
                mask("sms", r.phone),
                outcome.reason,
            )
            return {"status": "maybe_sent"}
        await ledger.settle(conn, key, "failed")
        if isinstance(outcome, ProviderThrottled):
            await self._log(conn, ctx, r, "sms", t, "deferred", error=str(outcome))
            raise RateLimited(outcome.retry_after_s, bucket="twilio", reason="twilio throttled")
        await self._log(conn, ctx, r, "sms", t, "failed", error=str(outcome), idempotency_key=key)
        if not isinstance(outcome, PermanentProviderError):
            raise Retry(self._backoff_s(d.spec, ctx.job.attempt), reason=f"twilio: {outcome}")
        if outcome.opted_out and r.user_id is not None:
            await self._record_carrier_opt_out(conn, r)
        if d.fallback:
            await self._fallback_to_email(ctx, r, body)
        if outcome.opted_out:
            return {"status": "opted_out"}
        raise Permanent(f"twilio refused the sms ({outcome.code})")

    async def _settle_unsent(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        channel: str,
        template: str,
        key: str,
        ledger: Ledger,
        outcome: Verdict | None,
    ) -> Result:
        """No provider call was made: suppressed by a compliance verdict, or captured in the
        sandbox outbox because the channel has no credentials."""
        if outcome is not None:
            await ledger.settle(conn, key, "failed")
            return await self._suppress(conn, ctx, r, channel, template, outcome.reason)
        await ledger.settle(conn, key, "sent")
        await self._log(conn, ctx, r, channel, template, "sandbox", idempotency_key=key)
        return {"status": "sandbox"}

    async def _record_carrier_opt_out(self, conn: asyncpg.Connection, r: Recipient) -> None:
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

    async def _fallback_to_email(self, ctx: Context[HandlerState], r: Recipient, body: str) -> None:
        if r.user_id is None:
            return
        await ctx.client.enqueue(
            "send_email",
            {
                "user_id": r.user_id,
                "subject": f"{self.options.app_name}: important alert",
                "body": body,
                "template": "sms_fallback",
                "category": Category.TRANSACTIONAL.value,
                "urgent": False,
            },
            key=f"fallback-{ctx.job.id}-email",
        )
        log.info("sms to %s failed permanently; falling back to email", mask("sms", r.phone))

    # -- email ------------------------------------------------------------------------------

    async def email(
        self,
        ctx: Context[HandlerState],
        d: Delivery,
        *,
        user_id: int | None = None,
        address: str | None = None,
        guest_name: str = "",
    ) -> Result:
        async with ctx.state.db.acquire() as conn:
            if user_id is not None:
                r = await load_user(conn, user_id)
                if r is None:
                    raise Permanent(f"user {user_id} does not exist")
            else:
                assert address is not None
                r = await load_address(conn, address, guest_name)
            verdict = _email_verdict(r, d.category)
            if not verdict.allowed:
                return await self._suppress(conn, ctx, r, "email", d.template, verdict.reason)
            assert r.email is not None
            subject = (
                Subject(user_id=r.user_id) if r.user_id is not None else Subject(address=r.email)
            )
            unsubscribe = self.signer.url(ctx.state.settings, subject)
            context = {**self.base_context(r), **d.context, "unsubscribe_url": unsubscribe}
            rendered = self.templates.email(d.render or d.template, **context)
            message = EmailMessage(
                from_=ctx.state.settings.email_from,
                to=(r.email,),
                subject=rendered.subject,
                html=rendered.html,
                text=rendered.text,
                headers={
                    "List-Unsubscribe": f"<{unsubscribe}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
                tags={"template": d.template},
            )
            key = idempotency_key(ctx.job.id, "email", d.template, r.email)
            ledger = self._ledger(ctx)
            claim = await ledger.claim(
                conn,
                key,
                job_id=ctx.job.id,
                channel="email",
                recipient=r.email,
                template=d.template,
            )
            if (done := self._claimed(claim)) is not None:
                return done
            outcome: EmailResult | ProviderError | Verdict | None = None
            async with conn.transaction():
                if r.user_id is not None:
                    await lock_consent_shared(conn, r.user_id, "email")
                    fresh = await load_user(conn, r.user_id)
                else:
                    fresh = await load_address(conn, r.email)
                verdict = (
                    _email_verdict(fresh, d.category) if fresh else Verdict(False, "user deleted")
                )
                if not verdict.allowed:
                    outcome = verdict
                elif ctx.state.email is None:
                    await delivery_log.to_sandbox(
                        conn,
                        channel="email",
                        recipient=r.email,
                        subject=rendered.subject,
                        body=rendered.text,
                        html=rendered.html,
                        headers=dict(message.headers),
                        job_id=ctx.job.id,
                    )
                else:
                    try:
                        outcome = await ctx.state.email.send(message, idempotency_key=key)
                    except ProviderError as exc:
                        outcome = exc
            return await self._settle_email(conn, ctx, r, d, key, ledger, rendered, outcome)

    async def _settle_email(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        d: Delivery,
        key: str,
        ledger: Ledger,
        rendered: RenderedEmail,
        outcome: EmailResult | ProviderError | Verdict | None,
    ) -> Result:
        t = d.template
        if isinstance(outcome, Verdict) or outcome is None:
            return await self._settle_unsent(conn, ctx, r, "email", t, key, ledger, outcome)
        if isinstance(outcome, EmailResult):
            await ledger.settle(conn, key, "sent", outcome.id)
            await self._log(
                conn,
                ctx,
                r,
                "email",
                t,
                "sent",
                provider_message_id=outcome.id,
                idempotency_key=key,
            )
            return {"status": "sent", "id": outcome.id}
        # Whatever happened, the same key makes the next attempt safe: the provider answers
        # a repeat with the original result instead of sending again.
        await ledger.settle(conn, key, "failed")
        if isinstance(outcome, ProviderThrottled):
            await self._log(conn, ctx, r, "email", t, "deferred", error=str(outcome))
            raise RateLimited(outcome.retry_after_s, bucket="resend", reason="resend throttled")
        await self._log(conn, ctx, r, "email", t, "failed", error=str(outcome), idempotency_key=key)
        if not isinstance(outcome, PermanentProviderError):
            raise Retry(self._backoff_s(d.spec, ctx.job.attempt), reason=f"resend: {outcome}")
        if d.fallback and r.user_id is not None:
            text = d.fallback_sms or f"{self.options.app_name}: {rendered.subject}"
            await ctx.client.enqueue(
                "send_sms",
                {"user_id": r.user_id, "body": text, "template": f"{t}_fallback"},
                key=f"fallback-{ctx.job.id}-sms",
            )
            log.info("email to %s failed permanently; falling back to sms", mask("email", r.email))
        raise Permanent(f"resend refused the email ({outcome.code})")
