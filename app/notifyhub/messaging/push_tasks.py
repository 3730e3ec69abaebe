"""The push tasks: a notification to every device of a user, and device registration; declared
on the messaging registry with their specs (:mod:`.catalog`). Compliance, quiet hours, the
ledger and the providers are the sender's business (:mod:`.push_channel`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qrunner import Context

from .catalog import SPECS, registry
from .channels import Delivery
from .consent import Category
from .push_devices import register_device as store_device

if TYPE_CHECKING:
    from notifyhub.state import HandlerState


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: int = Field(gt=0)


class PushPayload(_Payload):
    title: str = Field(min_length=1, max_length=120)
    body: str = Field(min_length=1, max_length=1000)
    #: Key-value data for the app (a deep link, an id); strings only, as FCM requires.
    data: dict[str, str] = Field(default_factory=dict, max_length=20)
    #: Label for the ledger and the delivery log.
    template: str = Field(default="message", pattern=r"^[a-z0-9_]{1,60}$")
    #: A later notification with the same key replaces this one on the device (e.g. one per
    #: day for a daily digest); default: one per job and template.
    collapse_key: str | None = Field(default=None, min_length=1, max_length=64)
    priority: Literal["high", "normal"] = "high"
    category: Category = Category.TRANSACTIONAL
    #: Send inside quiet hours too (the caller vouches it cannot wait).
    quiet_hours_exempt: bool = False


class DevicePayload(_Payload):
    platform: Literal["fcm", "apns"]
    token: str = Field(min_length=8, max_length=4096, pattern=r"^[!-~]+$")


def push_delivery(p: PushPayload, spec_name: str = "send_push") -> Delivery:
    context: dict[str, Any] = {
        "title": p.title,
        "body": p.body,
        "data": p.data,
        "collapse_id": p.collapse_key,
        "priority": p.priority,
    }
    return Delivery(
        SPECS[spec_name],
        p.template,
        context,
        category=p.category,
        quiet_exempt=p.quiet_hours_exempt,
    )


@registry.task(**SPECS["send_push"].declaration(), payload=PushPayload)
async def send_push(ctx: Context[HandlerState], p: PushPayload) -> dict[str, Any]:
    return await ctx.state.messaging.sender.push(ctx, p.user_id, push_delivery(p))


@registry.task(**SPECS["register_device"].declaration(), payload=DevicePayload)
async def register_device(ctx: Context[HandlerState], p: DevicePayload) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        await store_device(conn, p.user_id, p.platform, p.token)
    return {"status": "registered", "platform": p.platform}
