"""SMS and email handlers: consent, quiet hours, fallbacks and no duplicate sends.

``registry`` holds every messaging task (see :mod:`.catalog` for queues, limits and retries)
and the HTTP routes for inbound SMS (``POST /hooks/twilio/sms``) and one-click unsubscribe
(``GET|POST /unsubscribe``). It registers no lifespan: the handlers package attaches
:func:`notifyhub.state.lifespan`, whose :class:`~notifyhub.state.HandlerState` is what every
handler and route here receives.

:func:`build_registry` makes a registry with other :class:`MessagingOptions` (tests inject a
clock and shrink the waits); ``registry`` is the one built with the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from notifyhub.state import HandlerState
from qrunner import Registry

from . import email_tasks, sms_tasks, unsubscribe, webhooks
from .catalog import SPECS, Handler, TaskSpec
from .options import MessagingOptions
from .sender import Sender
from .templates import Templates
from .unsubscribe import Signer

__all__ = ["SPECS", "MessagingOptions", "build_registry", "registry"]


def _find_state(state: Any) -> HandlerState:
    """The worker hands routes what the lifespans yielded: one state, or a tuple of them."""
    if isinstance(state, HandlerState):
        return state
    for item in state if isinstance(state, tuple) else ():
        if isinstance(item, HandlerState):
            return item
    raise TypeError("messaging routes need the HandlerState from notifyhub.state.lifespan")


def build_registry(options: MessagingOptions | None = None) -> Registry:
    opts = options or MessagingOptions()
    registry = Registry()
    signer = Signer()
    sender = Sender(opts, Templates(), signer)

    def add(spec: TaskSpec, model: type[BaseModel]) -> Callable[[Handler], Handler]:
        return registry.task(
            spec.name,
            queue=spec.queue,
            payload=model,
            max_retries=spec.max_retries,
            backoff_base_s=spec.backoff_base_s * opts.backoff_scale,
            backoff_cap_s=spec.backoff_cap_s * opts.backoff_scale,
            timeout_s=spec.timeout_s,
            rate_limit=spec.rate_limit,
        )

    sms_tasks.register(registry, sender, add)
    email_tasks.register(registry, sender, add)

    @registry.http_setup(public_prefixes=["/hooks/", "/unsubscribe"])
    def routes(app: Any, state: Any) -> None:
        handler_state = _find_state(state)
        webhooks.add_routes(app, handler_state, opts)
        unsubscribe.add_routes(app, handler_state, signer)

    return registry


registry = build_registry()
