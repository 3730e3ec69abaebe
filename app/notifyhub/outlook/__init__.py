"""Daily outlooks: pre-generated at night, delivered at each user's local morning.

``generate_daily_outlooks`` fans out one ``generate_user_outlook`` job per active user,
``deliver_due_outlooks`` hands finished outlooks to the messaging tasks once the user's local
delivery time has come, and ``optimize_outlook_content`` keeps weekly engagement numbers per
content type.
"""

from .tasks import registry

__all__ = ["registry"]
