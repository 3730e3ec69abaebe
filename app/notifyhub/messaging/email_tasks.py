"""The email tasks: payload models and handlers, declared on the messaging registry with their
specs (:mod:`.catalog`); the onboarding sequence is in :mod:`.onboarding`.

Handlers that take an id (order, meeting, purchase) read the row when the job runs rather than
trusting a payload snapshot, so a receipt shows what was actually bought and a reminder for a
cancelled meeting is skipped.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from qrunner import Context, Permanent

from .catalog import SPECS, registry
from .channels import Delivery
from .consent import Category

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
SENT = ("sent", "sandbox", "duplicate")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _UserPayload(_Payload):
    user_id: int = Field(gt=0)


class CategoryAmount(_Payload):
    name: str
    amount: Decimal


class MonthlyReportPayload(_UserPayload):
    month: date  # any day of the month reported
    income: Decimal
    spending: Decimal
    savings: Decimal
    currency: Currency
    categories: list[CategoryAmount] = Field(default_factory=list, max_length=10)


class CareerInsightsPayload(_UserPayload):
    headline: str = Field(min_length=1, max_length=120)
    insights: list[str] = Field(min_length=1, max_length=10)
    salary_median: Decimal | None = None
    currency: Currency = "USD"


class EducationalContentPayload(_UserPayload):
    topic: str = Field(min_length=1, max_length=80)
    title: str = Field(min_length=1, max_length=120)
    summary: str = Field(min_length=1, max_length=2000)
    url: str | None = None


class WelcomePayload(_UserPayload):
    pass


class OrderConfirmationPayload(_Payload):
    order_id: int = Field(gt=0)


class MeetingPayload(_UserPayload):
    meeting_id: int = Field(gt=0)


class MeetingReminderPayload(MeetingPayload):
    window: Literal["24h", "1h"] = "24h"


class GoalMilestonePayload(_UserPayload):
    goal: str | None = None
    milestone: str = Field(min_length=1, max_length=120)
    saved: Decimal | None = None
    target: Decimal | None = None
    currency: Currency = "USD"
    milestone_id: int | None = None


class PhaseTransitionPayload(_UserPayload):
    from_phase: str = Field(min_length=1, max_length=40)
    to_phase: str = Field(min_length=1, max_length=40)
    note: str | None = None


class CreditPurchasePayload(_Payload):
    purchase_id: int = Field(gt=0)


class LowCreditPayload(_UserPayload):
    balance: Decimal
    threshold: Decimal


class EmailPayload(_Payload):
    """A generic email to a user (``user_id``) or to a bare address (``to``, no user row: a
    guest, an admin's test message); the same suppression checks apply either way."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"user_id": 1, "subject": "Hello", "body": "Hi there."}]},
    )

    user_id: int | None = Field(default=None, gt=0)
    to: str | None = Field(default=None, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)
    template: str = Field(default="message", pattern=r"^[a-z0-9_]{1,60}$")
    category: Category = Category.TRANSACTIONAL
    #: On a permanent failure, try SMS instead (a user only: a bare address has no phone).
    urgent: bool = False

    @model_validator(mode="after")
    def _one_recipient(self) -> EmailPayload:
        if (self.user_id is None) == (self.to is None):
            raise ValueError("give exactly one of user_id and to")
        return self


def _month_label(month: date) -> str:
    return month.strftime("%B %Y")


async def _user_email(
    ctx: Context[HandlerState], name: str, user_id: int, context: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    template = name.removeprefix("send_").removesuffix("_email")
    return await ctx.state.messaging.sender.email(
        ctx, Delivery(SPECS[name], template, context, **kw), user_id=user_id
    )


@registry.task(**SPECS["send_monthly_report"].declaration(), payload=MonthlyReportPayload)
async def send_monthly_report(
    ctx: Context[HandlerState], p: MonthlyReportPayload
) -> dict[str, Any]:
    context = {**p.model_dump(), "month_label": _month_label(p.month)}
    return await _user_email(ctx, "send_monthly_report", p.user_id, context)


@registry.task(**SPECS["send_career_insights"].declaration(), payload=CareerInsightsPayload)
async def send_career_insights(
    ctx: Context[HandlerState], p: CareerInsightsPayload
) -> dict[str, Any]:
    return await _user_email(
        ctx, "send_career_insights", p.user_id, p.model_dump(), category=Category.MARKETING
    )


@registry.task(**SPECS["send_educational_content"].declaration(), payload=EducationalContentPayload)
async def send_educational_content(
    ctx: Context[HandlerState], p: EducationalContentPayload
) -> dict[str, Any]:
    return await _user_email(
        ctx, "send_educational_content", p.user_id, p.model_dump(), category=Category.MARKETING
    )


@registry.task(**SPECS["send_welcome_email"].declaration(), payload=WelcomePayload)
async def send_welcome_email(ctx: Context[HandlerState], p: WelcomePayload) -> dict[str, Any]:
    return await _user_email(ctx, "send_welcome_email", p.user_id, {})


@registry.task(**SPECS["send_order_confirmation"].declaration(), payload=OrderConfirmationPayload)
async def send_order_confirmation(
    ctx: Context[HandlerState], p: OrderConfirmationPayload
) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        order = await conn.fetchrow(
            """
            SELECT o.number, o.user_id, o.customer_email, o.total, o.currency, o.placed_at,
                   b.name AS business, c.name AS customer_name
            FROM orders o JOIN businesses b ON b.id = o.business_id
            LEFT JOIN customers c ON c.id = o.customer_id
            WHERE o.id = $1
            """,
            p.order_id,
        )
        if order is None:
            raise Permanent(f"order {p.order_id} does not exist")
        items = await conn.fetch(
            """
            SELECT pr.name, oi.quantity, oi.quantity * oi.unit_price AS line_total
            FROM order_items oi JOIN products pr ON pr.id = oi.product_id
            WHERE oi.order_id = $1 ORDER BY oi.line_no
            """,
            p.order_id,
        )
    context = {
        "number": order["number"],
        "business": order["business"],
        "total": order["total"],
        "currency": order["currency"],
        "placed_at": order["placed_at"],
        "items": [dict(i) for i in items],
    }
    d = Delivery(
        SPECS["send_order_confirmation"],
        "order_confirmation",
        context,
        category=Category.REQUIRED,
    )
    if order["user_id"] is not None:
        return await ctx.state.messaging.sender.email(ctx, d, user_id=order["user_id"])
    return await ctx.state.messaging.sender.email(
        ctx, d, address=order["customer_email"], guest_name=order["customer_name"] or ""
    )


async def _meeting(ctx: Context[HandlerState], p: MeetingPayload) -> dict[str, Any] | None:
    async with ctx.state.db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT title, starts_at, ends_at, status, location, url FROM meetings WHERE id = $1",
            p.meeting_id,
        )
    if row is None:
        raise Permanent(f"meeting {p.meeting_id} does not exist")
    return None if row["status"] in ("cancelled", "completed") else dict(row)


@registry.task(**SPECS["send_meeting_invitation"].declaration(), payload=MeetingPayload)
async def send_meeting_invitation(ctx: Context[HandlerState], p: MeetingPayload) -> dict[str, Any]:
    row = await _meeting(ctx, p)
    if row is None:
        return {"status": "skipped", "reason": "meeting is over or cancelled"}
    return await _user_email(ctx, "send_meeting_invitation", p.user_id, row)


@registry.task(**SPECS["send_meeting_reminder"].declaration(), payload=MeetingReminderPayload)
async def send_meeting_reminder(
    ctx: Context[HandlerState], p: MeetingReminderPayload
) -> dict[str, Any]:
    row = await _meeting(ctx, p)
    if row is None:
        return {"status": "skipped", "reason": "meeting is over or cancelled"}
    d = Delivery(
        SPECS["send_meeting_reminder"],
        f"meeting_reminder_{p.window}",
        # The time left is counted from when the reminder goes out ("in 55 minutes").
        {**row, "window": p.window, "reference_at": ctx.state.messaging.options.clock()},
        render="meeting_reminder",
    )
    result = await ctx.state.messaging.sender.email(ctx, d, user_id=p.user_id)
    if result["status"] in SENT:
        column = "reminded_1h_at" if p.window == "1h" else "reminded_24h_at"
        async with ctx.state.db.acquire() as conn:
            await conn.execute(
                f"UPDATE meeting_participants SET {column} = coalesce({column}, now()) "
                "WHERE meeting_id = $1 AND user_id = $2",
                p.meeting_id,
                p.user_id,
            )
    return result


@registry.task(**SPECS["send_goal_milestone"].declaration(), payload=GoalMilestonePayload)
async def send_goal_milestone(
    ctx: Context[HandlerState], p: GoalMilestonePayload
) -> dict[str, Any]:
    result = await _user_email(ctx, "send_goal_milestone", p.user_id, p.model_dump())
    if p.milestone_id is not None and result["status"] in SENT:
        async with ctx.state.db.acquire() as conn:
            await conn.execute(
                "UPDATE goal_milestones SET email_sent_at = coalesce(email_sent_at, now()) "
                "WHERE id = $1",
                p.milestone_id,
            )
    return result


@registry.task(**SPECS["send_phase_transition"].declaration(), payload=PhaseTransitionPayload)
async def send_phase_transition(
    ctx: Context[HandlerState], p: PhaseTransitionPayload
) -> dict[str, Any]:
    return await _user_email(ctx, "send_phase_transition", p.user_id, p.model_dump())


@registry.task(
    **SPECS["send_credit_purchase_confirmation"].declaration(), payload=CreditPurchasePayload
)
async def send_credit_purchase_confirmation(
    ctx: Context[HandlerState], p: CreditPurchasePayload
) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        row = await conn.fetchrow(
            """
            SELECT cp.user_id, cp.credits, cp.amount, cp.currency, cp.status,
                   cp.payment_reference AS reference, coalesce(uc.balance, 0) AS balance
            FROM credit_purchases cp LEFT JOIN user_credits uc ON uc.user_id = cp.user_id
            WHERE cp.id = $1
            """,
            p.purchase_id,
        )
    if row is None:
        raise Permanent(f"credit purchase {p.purchase_id} does not exist")
    if row["status"] != "completed":
        return {"status": "skipped", "reason": f"purchase is {row['status']}"}
    return await _user_email(
        ctx,
        "send_credit_purchase_confirmation",
        row["user_id"],
        dict(row),
        category=Category.REQUIRED,
    )


@registry.task(**SPECS["send_low_credit_alert"].declaration(), payload=LowCreditPayload)
async def send_low_credit_alert(ctx: Context[HandlerState], p: LowCreditPayload) -> dict[str, Any]:
    text = (
        f"{ctx.state.messaging.options.app_name}: your credit balance is down to {p.balance}. "
        "Top up to avoid interruptions."
    )
    return await _user_email(
        ctx,
        "send_low_credit_alert",
        p.user_id,
        p.model_dump(),
        fallback=True,
        fallback_sms=text,
    )


@registry.task(**SPECS["send_email"].declaration(), payload=EmailPayload)
async def send_email(ctx: Context[HandlerState], p: EmailPayload) -> dict[str, Any]:
    context = {
        "email_subject": p.subject,
        # Only blank lines are trimmed: a paragraph's own indent (a list) is kept.
        "paragraphs": [x.strip("\n") for x in p.body.split("\n\n") if x.strip()],
    }
    d = Delivery(
        SPECS["send_email"],
        p.template,
        context,
        render="message",
        category=p.category,
        fallback=p.urgent,
        fallback_sms=p.subject,
    )
    if p.to is not None:
        return await ctx.state.messaging.sender.email(ctx, d, address=p.to.lower())
    return await ctx.state.messaging.sender.email(ctx, d, user_id=p.user_id)
