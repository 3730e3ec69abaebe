"""The SMS tasks: payload models and handlers. Each handler only says what to send; the
compliance, ledger and provider handling is the sender's (:mod:`.sender`)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from notifyhub.state import HandlerState
from qrunner import Context, Registry

from .catalog import SPECS, AddTask
from .sender import Delivery, Sender

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: int = Field(gt=0)


class CriticalAlertPayload(_Payload):
    alert_type: str = Field(min_length=1, max_length=40)  # overdraft, security, fraud ...
    message: str = Field(min_length=1, max_length=300)
    amount: Decimal | None = None
    currency: Currency = "USD"
    account_last4: Annotated[str, StringConstraints(pattern=r"^\d{4}$")] | None = None


class PaymentReminderPayload(_Payload):
    payee: str = Field(min_length=1, max_length=80)
    amount: Decimal = Field(gt=0)
    currency: Currency
    due_date: date
    bill_id: int | None = None


class WeeklyCheckinPayload(_Payload):
    week_of: date
    score: int | None = Field(default=None, ge=0, le=100)
    tip: str | None = Field(default=None, max_length=160)


class MilestoneReminderPayload(_Payload):
    milestone: str = Field(min_length=1, max_length=120)
    goal: str | None = None
    due_date: date | None = None
    saved: Decimal | None = None
    target: Decimal | None = None
    currency: Currency = "USD"
    milestone_id: int | None = None


class SmsPayload(_Payload):
    body: str = Field(min_length=1, max_length=1600)
    #: Label for the ledger and the delivery log (e.g. ``low_credit_alert_fallback``).
    template: str = Field(default="message", pattern=r"^[a-z0-9_]{1,60}$")
    #: Send inside quiet hours too (the caller vouches it cannot wait).
    quiet_hours_exempt: bool = False
    #: On a permanent failure, try email instead.
    urgent: bool = False


def register(registry: Registry, sender: Sender, add: AddTask) -> None:
    """``add(spec, model)`` returns the registering decorator for that task."""

    @add(SPECS["send_critical_financial_alert"], CriticalAlertPayload)
    async def send_critical_financial_alert(
        ctx: Context[HandlerState], p: CriticalAlertPayload
    ) -> dict[str, Any]:
        context = p.model_dump(exclude={"user_id"})
        d = Delivery(
            SPECS["send_critical_financial_alert"],
            "critical_financial_alert",
            context,
            fallback=True,
        )
        return await sender.sms(ctx, p.user_id, d)

    @add(SPECS["send_payment_reminder"], PaymentReminderPayload)
    async def send_payment_reminder(
        ctx: Context[HandlerState], p: PaymentReminderPayload
    ) -> dict[str, Any]:
        d = Delivery(SPECS["send_payment_reminder"], "payment_reminder", p.model_dump())
        result = await sender.sms(ctx, p.user_id, d)
        if p.bill_id is not None and result["status"] in ("sent", "sandbox", "maybe_sent"):
            async with ctx.state.db.acquire() as conn:
                await conn.execute(
                    "UPDATE bills SET reminded_at = now() WHERE id = $1 AND user_id = $2",
                    p.bill_id,
                    p.user_id,
                )
        return result

    @add(SPECS["send_weekly_checkin"], WeeklyCheckinPayload)
    async def send_weekly_checkin(
        ctx: Context[HandlerState], p: WeeklyCheckinPayload
    ) -> dict[str, Any]:
        d = Delivery(SPECS["send_weekly_checkin"], "weekly_checkin", p.model_dump())
        return await sender.sms(ctx, p.user_id, d)

    @add(SPECS["send_milestone_reminder"], MilestoneReminderPayload)
    async def send_milestone_reminder(
        ctx: Context[HandlerState], p: MilestoneReminderPayload
    ) -> dict[str, Any]:
        d = Delivery(SPECS["send_milestone_reminder"], "milestone_reminder", p.model_dump())
        result = await sender.sms(ctx, p.user_id, d)
        if p.milestone_id is not None and result["status"] in ("sent", "sandbox", "maybe_sent"):
            async with ctx.state.db.acquire() as conn:
                await conn.execute(
                    "UPDATE goal_milestones SET sms_reminded_at = now() WHERE id = $1",
                    p.milestone_id,
                )
        return result

    @add(SPECS["send_sms"], SmsPayload)
    async def send_sms(ctx: Context[HandlerState], p: SmsPayload) -> dict[str, Any]:
        d = Delivery(
            SPECS["send_sms"],
            p.template,
            {"body": p.body},
            render="message",
            quiet_exempt=p.quiet_hours_exempt,
            fallback=p.urgent,
        )
        return await sender.sms(ctx, p.user_id, d)
