"""Daily outlooks: pre-generated at night, delivered at each user's local morning.

``generate_daily_outlooks`` shares the active users out to ``generate_outlook_batch`` jobs of a
few hundred each (``generate_user_outlook`` generates one user's), ``deliver_due_outlooks``
hands finished outlooks to the messaging tasks once the user's local delivery time has come,
and ``optimize_outlook_content`` keeps weekly engagement numbers per content type.
"""

from .tasks import registry

__all__ = ["registry"]
