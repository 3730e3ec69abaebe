"""Payment webhooks: ``POST /hooks/payments/{provider}`` and the task that applies each event.

The route verifies the signature with the provider's own scheme (Paystack, Flutterwave, Stripe,
or Standard Webhooks for qrunner's own, see :mod:`.signature`), stores the event once per
(provider, event id) and enqueues ``process_payment_event``; the task changes state once per
event inside a transaction.
"""

from .payments import registry

__all__ = ["registry"]
