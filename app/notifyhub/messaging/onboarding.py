"""The onboarding sequence: one email per step, each step a delayed job enqueued by the last.

Each step's job enqueues the next with a deterministic key (user, sequence, step), so a re-run
of a step (redelivery, retry after the send succeeded) enqueues nothing twice; and a step whose
email the ledger shows as already sent still enqueues the next one, so a crash between the send
and the enqueue cannot end the sequence. Progress is kept in ``onboarding_progress``. The
sequence stops for good when a step finds the user unsubscribed (or otherwise not allowed to
receive it): that is recorded as ``stopped_at`` and no further step is enqueued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from qrunner import Context

from .catalog import SPECS, registry
from .channels import Delivery
from .consent import Category

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

STEPS: tuple[tuple[str, str], ...] = (
    (
        "Welcome aboard",
        "Start by telling us what you are saving for: a goal gives every "
        "reminder and report a purpose.",
    ),
    (
        "Set up your first budget",
        "Add your regular bills so we can remind you before they are due, never after.",
    ),
    (
        "Track your progress",
        "Your weekly check-in shows how your spending compares with your "
        "plan. Reply to it any time.",
    ),
    (
        "Your first monthly report",
        "At the start of each month you get a summary of income, "
        "spending and savings. Here is what to look for in it.",
    ),
)


class OnboardingPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: int = Field(gt=0)
    step: int = Field(default=0, ge=0)
    sequence: str = Field(default="welcome", pattern=r"^[a-z0-9_]{1,40}$")


def next_key(p: OnboardingPayload) -> str:
    return f"onboarding-{p.user_id}-{p.sequence}-{p.step + 1}"


@registry.task(**SPECS["send_onboarding_sequence"].declaration(), payload=OnboardingPayload)
async def send_onboarding_sequence(
    ctx: Context[HandlerState], p: OnboardingPayload
) -> dict[str, Any]:
    if p.step >= len(STEPS):
        return {"status": "complete"}
    async with ctx.state.db.acquire() as conn:
        progress = await conn.fetchrow(
            "SELECT stopped_at, completed_at FROM onboarding_progress "
            "WHERE user_id = $1 AND sequence = $2",
            p.user_id,
            p.sequence,
        )
    if progress is not None and (progress["stopped_at"] or progress["completed_at"]):
        return {"status": "stopped"}
    title, body = STEPS[p.step]
    context = {"step": p.step, "steps": len(STEPS), "step_title": title, "step_body": body}
    d = Delivery(
        SPECS["send_onboarding_sequence"],
        f"onboarding_{p.step}",
        context,
        render="onboarding",
        category=Category.MARKETING,
    )
    result = await ctx.state.messaging.sender.email(ctx, d, user_id=p.user_id)
    last = p.step + 1 >= len(STEPS)
    delays = ctx.state.messaging.options.onboarding_delays_s
    delay = 0.0 if last else delays[min(p.step + 1, len(delays) - 1)]
    async with ctx.state.db.acquire() as conn:
        if result["status"] == "suppressed":
            await conn.execute(
                """
                INSERT INTO onboarding_progress
                       (user_id, sequence, step, stopped_at, stop_reason)
                VALUES ($1, $2, $3, now(), $4)
                ON CONFLICT (user_id, sequence) DO UPDATE
                   SET stopped_at = now(), stop_reason = EXCLUDED.stop_reason, next_at = NULL
                """,
                p.user_id,
                p.sequence,
                p.step,
                f"unsubscribed: {result['reason']}"[:200],
            )
            return {**result, "sequence": "stopped"}
        await conn.execute(
            """
            INSERT INTO onboarding_progress (user_id, sequence, step, next_at, completed_at)
            VALUES ($1, $2, $3,
                    CASE WHEN $4 THEN NULL ELSE now() + make_interval(secs => $5) END,
                    CASE WHEN $4 THEN now() END)
            ON CONFLICT (user_id, sequence) DO UPDATE
               SET step = greatest(onboarding_progress.step, EXCLUDED.step),
                   next_at = EXCLUDED.next_at,
                   completed_at = coalesce(onboarding_progress.completed_at,
                                           EXCLUDED.completed_at)
            """,
            p.user_id,
            p.sequence,
            p.step + 1,
            last,
            delay,
        )
    if not last:
        await ctx.client.enqueue(
            "send_onboarding_sequence",
            {"user_id": p.user_id, "step": p.step + 1, "sequence": p.sequence},
            delay_s=delay,
            key=next_key(p),
            key_ttl_s=delay + 86_400,
        )
    return result
