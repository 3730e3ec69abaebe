"""Payment webhooks: ``POST /hooks/payments/{provider}`` and the task that applies each event.

The route verifies the signature, stores the event once per provider event id and enqueues
``process_payment_event``; the task changes state once per event inside a transaction.
"""

from .payments import registry

__all__ = ["registry"]
