"""The messaging HTTP routes: inbound SMS keywords (``POST /hooks/twilio/sms``, see
:mod:`.webhooks`) and one-click unsubscribe (``GET|POST /unsubscribe``, see :mod:`.unsubscribe`).

Both check their own signatures, so they answer without the HTTP endpoint's token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from . import unsubscribe, webhooks
from .catalog import registry

if TYPE_CHECKING:
    from notifyhub.state import HandlerState


@registry.http_setup(public_prefixes=["/hooks/", "/unsubscribe"])
def add_routes(app: web.Application, state: HandlerState) -> None:
    webhooks.add_routes(app, state, state.messaging.options)
    unsubscribe.add_routes(app, state, state.messaging.signer)
