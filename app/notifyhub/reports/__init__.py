"""Reports, exports and inventory alerts for the point-of-sale data.

Files are written under ``NOTIFYHUB_EXPORTS_DIR`` from rows streamed out of PostgreSQL with a
server-side cursor; every run is recorded in ``report_runs``.
"""

from .tasks import registry

__all__ = ["registry"]
