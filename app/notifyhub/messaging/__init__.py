"""SMS, email and push handlers: consent, quiet hours, fallbacks and no duplicate sends.

``registry`` (declared in :mod:`.catalog`, with every task's queue, limits and retries) holds
the tasks of :mod:`.sms_tasks`, :mod:`.email_tasks`, :mod:`.onboarding`, :mod:`.push_tasks` and
:mod:`.preferred`, and the HTTP routes of :mod:`.routes`. It registers no lifespan: the app
attaches :func:`notifyhub.state.lifespan`, whose :class:`~notifyhub.state.HandlerState` carries
what handlers and routes here use besides the database and the provider clients:
``state.messaging`` (:class:`.services.Messaging`: the sender, the unsubscribe-link signer and
the :class:`MessagingOptions`). Tests put other options there (a stepped clock, shorter waits).
"""

from __future__ import annotations

from . import email_tasks, onboarding, preferred, push_tasks, routes, sms_tasks
from .catalog import SPECS, registry
from .options import MessagingOptions
from .services import Messaging

__all__ = [
    "SPECS",
    "Messaging",
    "MessagingOptions",
    "email_tasks",
    "onboarding",
    "preferred",
    "push_tasks",
    "registry",
    "routes",
    "sms_tasks",
]
