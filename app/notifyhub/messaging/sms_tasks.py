"""The SMS tasks: payload models and handlers, declared on the messaging registry with their
specs (:mod:`.catalog`). Each handler only says what to send; the compliance, ledger and
provider handling is the sender's (:mod:`.sender`), reached through ``ctx.state.messaging``."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from qrunner import Context

from .catalog import SPECS, registry
from .channels import Delivery

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

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


@registry.task(**SPECS["send_critical_financial_alert"].declaration(), payload=CriticalAlertPayload)
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
    return await ctx.state.messaging.sender.sms(ctx, p.user_id, d)


@registry.task(**SPECS["send_payment_reminder"].declaration(), payload=PaymentReminderPayload)
async def send_payment_reminder(
    ctx: Context[HandlerState], p: PaymentReminderPayload
) -> dict[str, Any]:
    d = Delivery(SPECS["send_payment_reminder"], "payment_reminder", p.model_dump())
    result = await ctx.state.messaging.sender.sms(ctx, p.user_id, d)
    if p.bill_id is not None and result["status"] in ("sent", "sandbox", "maybe_sent"):
        async with ctx.state.db.acquire() as conn:
            await conn.execute(
                "UPDATE bills SET reminded_at = now() WHERE id = $1 AND user_id = $2",
                p.bill_id,
                p.user_id,
            )
    return result


@registry.task(**SPECS["send_weekly_checkin"].declaration(), payload=WeeklyCheckinPayload)
async def send_weekly_checkin(
    ctx: Context[HandlerState], p: WeeklyCheckinPayload
) -> dict[str, Any]:
    d = Delivery(SPECS["send_weekly_checkin"], "weekly_checkin", p.model_dump())
    return await ctx.state.messaging.sender.sms(ctx, p.user_id, d)


@registry.task(**SPECS["send_milestone_reminder"].declaration(), payload=MilestoneReminderPayload)
async def send_milestone_reminder(
    ctx: Context[HandlerState], p: MilestoneReminderPayload
) -> dict[str, Any]:
    d = Delivery(SPECS["send_milestone_reminder"], "milestone_reminder", p.model_dump())
    result = await ctx.state.messaging.sender.sms(ctx, p.user_id, d)
    if p.milestone_id is not None and result["status"] in ("sent", "sandbox", "maybe_sent"):
        async with ctx.state.db.acquire() as conn:
            await conn.execute(
                "UPDATE goal_milestones SET sms_reminded_at = now() WHERE id = $1",
                p.milestone_id,
            )
    return result


@registry.task(**SPECS["send_sms"].declaration(), payload=SmsPayload)
async def send_sms(ctx: Context[HandlerState], p: SmsPayload) -> dict[str, Any]:
    d = Delivery(
        SPECS["send_sms"],
        p.template,
        {"body": p.body},
        render="message",
        quiet_exempt=p.quiet_hours_exempt,
        fallback=p.urgent,
    )
    return await ctx.state.messaging.sender.sms(ctx, p.user_id, d)
