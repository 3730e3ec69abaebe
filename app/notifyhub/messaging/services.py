"""The messaging services handlers and routes reach through ``ctx.state.messaging``.

Built once per worker process with the state (:func:`notifyhub.state.lifespan`); a test builds
one with other :class:`~.options.MessagingOptions` (a stepped clock, shorter waits) and puts it
on the :class:`~notifyhub.state.HandlerState` it runs the tasks with.
"""

from __future__ import annotations

from .options import MessagingOptions
from .sender import Sender
from .templates import Templates
from .unsubscribe import Signer


class Messaging:
    def __init__(
        self,
        options: MessagingOptions | None = None,
        *,
        templates: Templates | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.options = options or MessagingOptions()
        #: Holds the per-process fallback key when no signing secret is set, so the links
        #: emails carry and the unsubscribe route that checks them must share it.
        self.signer = signer or Signer()
        self.sender = Sender(self.options, templates or Templates(), self.signer)
