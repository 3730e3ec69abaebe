"""One notification on the channel the user prefers: push, else email, else SMS.

The order follows cost and intrusiveness: a push is free and the user chose to install the
app; email is free but slower to be seen; SMS costs money per segment. A channel is *eligible*
when the user's consents allow it (and, for push, a device is registered), judged by the same
rules the sender applies (:mod:`.consent`). The first eligible channel is tried through the
sender's pipeline, so quiet hours, the ledger and the re-check under the consent lock apply as
for any message. When that channel ends without reaching the user (suppressed by a consent
change since, every device unregistered, refused for good), the next eligible one is tried.

A channel that asks to wait (quiet hours, a throttled or failing provider) makes the whole job
wait: the next attempt starts again from the top, so a push deferred by quiet hours is still a
push in the morning, not an email now. Each channel has its own ledger key, so a re-run sends
nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qrunner import Context, Permanent

from .catalog import SPECS, TaskSpec, registry
from .channels import Channel, Delivery, Result
from .consent import Category, Verdict
from .recipients import Recipient, load_user

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

    from .sender import Sender

log = logging.getLogger(__name__)

ChannelName = Literal["push", "email", "sms"]
ORDER: tuple[ChannelName, ...] = ("push", "email", "sms")
#: Results after which the next channel is tried: the user was not reached on this one.
_NOT_REACHED = frozenset({"suppressed", "unregistered"})


def eligible(
    sender: Sender, r: Recipient, deliveries: Mapping[ChannelName, Delivery]
) -> tuple[list[ChannelName], dict[str, str]]:
    """The channels ``r`` may get these deliveries on, in order, and why the others may not."""
    judges: dict[ChannelName, Channel[Any, Any]] = {
        "push": sender.push_channel,
        "email": sender.email_channel,
        "sms": sender.sms_channel,
    }
    allowed: list[ChannelName] = []
    refused: dict[str, str] = {}
    for name in ORDER:
        verdict: Verdict = judges[name].verdict(r, deliveries[name])
        if verdict.allowed:
            allowed.append(name)
        else:
            refused[name] = verdict.reason
    return allowed, refused


async def deliver_preferred(
    ctx: Context[HandlerState],
    user_id: int,
    title: str,
    body: str,
    email_template: str,
    email_context: Mapping[str, Any],
    sms_text: str,
    *,
    template: str = "message",
    category: Category = Category.TRANSACTIONAL,
    data: Mapping[str, str] | None = None,
    collapse_key: str | None = None,
    spec: TaskSpec | None = None,
    quiet_hours_exempt: bool = False,
) -> Result:
    """Sends by push (``title``, ``body``, ``data``), else email (``email_template`` rendered
    with ``email_context``), else SMS (``sms_text``); the result names the ``channel`` used.

    ``template`` labels the message in the ledger and the delivery log on every channel;
    ``spec`` is the calling task's (its backoff paces retries), by default ``send_preferred``'s.
    ``quiet_hours_exempt``: for a message the user asked to get at that hour (their outlook).
    """
    spec = spec or SPECS["send_preferred"]
    deliveries: dict[ChannelName, Delivery] = {
        "push": Delivery(
            spec,
            template,
            {"title": title, "body": body, "data": dict(data or {}), "collapse_id": collapse_key},
            category=category,
            quiet_exempt=quiet_hours_exempt,
        ),
        "email": Delivery(spec, template, email_context, render=email_template, category=category),
        "sms": Delivery(
            spec,
            template,
            {"body": sms_text},
            render="message",
            category=category,
            quiet_exempt=quiet_hours_exempt,
        ),
    }
    sender = ctx.state.messaging.sender
    async with ctx.state.db.acquire() as conn:
        r = await load_user(conn, user_id)
    if r is None:
        raise Permanent(f"user {user_id} does not exist")
    channels, refused = eligible(sender, r, deliveries)
    tried: dict[str, Any] = {}
    for name in channels:
        try:
            result = await _send(ctx, sender, name, user_id, deliveries[name])
        except Permanent as exc:
            if name == channels[-1]:
                raise
            tried[name] = {"status": "failed", "reason": exc.reason}
            continue
        if result["status"] not in _NOT_REACHED or name == channels[-1]:
            return {**result, "channel": name, "skipped": {**refused, **tried}}
        tried[name] = result
        log.info("preferred %s for user %d: %s not reached, next channel", template, user_id, name)
    return {"status": "suppressed", "channel": None, "skipped": {**refused, **tried}}


async def _send(
    ctx: Context[HandlerState], sender: Sender, name: ChannelName, user_id: int, d: Delivery
) -> Result:
    if name == "push":
        return await sender.push(ctx, user_id, d)
    if name == "email":
        return await sender.email(ctx, d, user_id=user_id)
    return await sender.sms(ctx, user_id, d)


class PreferredPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: int = Field(gt=0)
    title: str = Field(min_length=1, max_length=120)
    body: str = Field(min_length=1, max_length=1000)
    #: An email template (``templates/email/NAME.{txt,html}``) and its context; the generic
    #: ``message`` template takes ``email_subject`` and ``paragraphs``.
    email_template: str = Field(default="message", pattern=r"^[a-z0-9_]{1,60}$")
    email_context: dict[str, Any] = Field(default_factory=dict)
    sms_text: str = Field(min_length=1, max_length=1600)
    template: str = Field(default="message", pattern=r"^[a-z0-9_]{1,60}$")
    category: Category = Category.TRANSACTIONAL
    data: dict[str, str] = Field(default_factory=dict, max_length=20)
    collapse_key: str | None = Field(default=None, min_length=1, max_length=64)
    #: The user chose to get this message at this hour (their outlook time): no quiet hours.
    quiet_hours_exempt: bool = False


@registry.task(**SPECS["send_preferred"].declaration(), payload=PreferredPayload)
async def send_preferred(ctx: Context[HandlerState], p: PreferredPayload) -> dict[str, Any]:
    return await deliver_preferred(
        ctx,
        p.user_id,
        p.title,
        p.body,
        p.email_template,
        p.email_context,
        p.sms_text,
        template=p.template,
        category=p.category,
        data=p.data,
        collapse_key=p.collapse_key,
        quiet_hours_exempt=p.quiet_hours_exempt,
    )
