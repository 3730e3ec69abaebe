"""Push as a :class:`~.channels.Channel`: the sender's pipeline, one device at a time.

The sender delivers one message to one address; a push goes to every device a user has
registered. So :class:`PushChannel` is bound to one device (:meth:`PushChannel.to`), whose
token is the address, and :func:`deliver_to_devices` runs the pipeline once per device. Each
device gets its own ledger key (job, ``push``, template, token), so a re-run of the job sends
only to devices that have not had it yet.

What push does like the other channels, and what differs:

- compliance: a push opt-in, no later opt-out, and the device still registered to the user
  (:func:`.consent.push_verdict`), judged again under the ``push`` consent lock right before
  the provider call, so an opt-out or a removed device wins over a queued push;
- quiet hours apply, as for SMS: a notification lights up a phone at night just the same;
- rendering is the task's title, body and data, with a collapse id per job and template, so a
  retried notification replaces the first one on the device instead of showing twice. That is
  why an unknown outcome (:class:`~notifyhub.providers.MaybeSent`) is retried for push where
  SMS settles it as maybe-sent;
- a provider saying the token is gone (FCM ``UNREGISTERED``, APNs 410) deletes the device and
  ends that device's delivery as ``unregistered``: no retry can reach it;
- without credentials for the device's platform, the notification goes to the sandbox outbox.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]

from notifyhub.providers import PermanentProviderError
from notifyhub.providers.push import DeviceUnregistered, PushMessage, PushResult, mask_token
from qrunner import Context, Permanent, RateLimited, Retry

from . import delivery_log
from .channels import Channel, Delivery, Result, Sent
from .consent import Verdict, push_verdict
from .options import MessagingOptions
from .push_devices import remove_device
from .recipients import PushDevice, Recipient, load_user
from .templates import Templates
from .unsubscribe import Signer

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

    from .sender import Sender

#: How a device's delivery ended, best first: the overall status of a push to several devices
#: is the best one among them.
_RANK = ("sent", "sandbox", "duplicate", "maybe_sent", "unregistered", "suppressed", "failed")


def collapse_id(job_id: str, template: str) -> str:
    """Per job and template, within APNs' 64 bytes: a repeat of the job replaces, not adds."""
    return f"{template[:24]}-{hashlib.sha256(f'{job_id}:{template}'.encode()).hexdigest()[:32]}"


class PushChannel(Channel[PushMessage, PushResult]):
    """Unbound (``device is None``) it judges the user only (consent, any device at all); bound
    to a device by :meth:`to` it also sends."""

    name = "push"
    provider = "push"
    quiet_hours = True

    def __init__(
        self,
        options: MessagingOptions,
        templates: Templates,
        signer: Signer,
        device: PushDevice | None = None,
    ) -> None:
        super().__init__(options, templates, signer)
        self.device = device

    def to(self, device: PushDevice) -> PushChannel:
        kind = ApnsChannel if device.platform == "apns" else FcmChannel
        return kind(self.options, self.templates, self.signer, device)

    def _device(self) -> PushDevice:
        if self.device is None:
            raise RuntimeError("an unbound push channel cannot send; bind it with .to(device)")
        return self.device

    def address(self, r: Recipient) -> str | None:
        if self.device is None or self.device not in r.push_devices:
            return None
        return self.device.token

    def verdict(self, r: Recipient, d: Delivery) -> Verdict:
        verdict = push_verdict(has_device=bool(r.push_devices), consent=r.push_consent)
        if verdict.allowed and self.device is not None and self.device not in r.push_devices:
            return Verdict(False, "device no longer registered")
        return verdict

    def render(
        self, ctx: Context[HandlerState], r: Recipient, d: Delivery, address: str
    ) -> PushMessage:
        c = d.context
        return PushMessage(
            title=str(c["title"]),
            body=str(c["body"]),
            data={str(k): str(v) for k, v in (c.get("data") or {}).items()},
            collapse_id=c.get("collapse_id") or collapse_id(ctx.job.id, d.template),
            priority="normal" if c.get("priority") == "normal" else "high",
        )

    def configured(self, state: HandlerState) -> bool:
        return state.push is not None and state.push.configured(self._device().platform)

    async def send(
        self, state: HandlerState, address: str, message: PushMessage, key: str
    ) -> PushResult:
        assert state.push is not None
        return await state.push.send(self._device().platform, address, message)

    async def to_sandbox(
        self, conn: asyncpg.Connection, job_id: str, address: str, message: PushMessage
    ) -> None:
        await delivery_log.to_sandbox(
            conn,
            channel="push",
            recipient=address,
            subject=message.title,
            body=message.body,
            headers={
                "platform": self._device().platform,
                "collapse_id": message.collapse_id,
                "priority": message.priority,
                "data": dict(message.data),
            },
            job_id=job_id,
        )

    def sent(self, result: PushResult, message: PushMessage) -> Sent:
        return Sent(result.id, {"status": "sent", "id": result.id, "platform": result.platform})

    async def refused(
        self,
        conn: asyncpg.Connection,
        ctx: Context[HandlerState],
        r: Recipient,
        d: Delivery,
        message: PushMessage,
        error: PermanentProviderError,
    ) -> Result | None:
        if isinstance(error, DeviceUnregistered):
            await remove_device(conn, self._device().token, f"{error.provider} {error.code}")
            return {"status": "unregistered", "reason": str(error.code)}
        return None


class FcmChannel(PushChannel):
    provider = "fcm"


class ApnsChannel(PushChannel):
    provider = "apns"


async def deliver_to_devices(
    ctx: Context[HandlerState], sender: Sender, user_id: int, d: Delivery
) -> Result:
    """Runs the sender's pipeline for each of the user's devices.

    A device that must wait (quiet hours, throttled, a transient failure) does not hold up the
    others: every device is tried, then the job waits as the slowest one asked (a ``Retry``
    when any device needs one, as that spends an attempt). Devices already sent are skipped on
    the re-run by the ledger. A device refused for good is reported in the result; the job
    fails only when every device was.
    """
    async with ctx.state.db.acquire() as conn:
        r = await load_user(conn, user_id)
    if r is None:
        raise Permanent(f"user {user_id} does not exist")
    unbound = sender.push_channel
    if not unbound.verdict(r, d).allowed:
        # One suppression, logged by the pipeline, rather than one per device.
        return await sender.deliver(ctx, unbound, d, user_id=user_id)
    devices: dict[str, Result] = {}
    later: Retry | RateLimited | None = None
    for device in r.push_devices:
        label = f"{device.platform}:{mask_token(device.token)}"
        try:
            devices[label] = await sender.deliver(ctx, unbound.to(device), d, user_id=user_id)
        except (Retry, RateLimited) as signal:
            later = _slowest(later, signal)
        except Permanent as exc:
            devices[label] = {"status": "failed", "reason": exc.reason}
    if later is not None:
        raise later
    statuses = [str(result["status"]) for result in devices.values()]
    if statuses and all(s == "failed" for s in statuses):
        raise Permanent(f"every device refused the push: {_reasons(devices)}")
    best = min(statuses, key=_rank, default="suppressed")
    return {"status": best, "devices": devices}


def _rank(status: str) -> int:
    return _RANK.index(status) if status in _RANK else len(_RANK)


def _slowest(
    current: Retry | RateLimited | None, signal: Retry | RateLimited
) -> Retry | RateLimited:
    def wait(s: Retry | RateLimited) -> float:
        return s.after_s if isinstance(s, Retry) else s.retry_after_s

    if current is None:
        return signal
    longest = max(wait(current), wait(signal))
    if isinstance(current, Retry) or isinstance(signal, Retry):
        reason = (current if isinstance(current, Retry) else signal).reason
        return Retry(longest, reason=reason)
    return RateLimited(longest, bucket=current.bucket or signal.bucket, reason=current.reason)


def _reasons(devices: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {v.get('reason', '')}" for k, v in devices.items())
