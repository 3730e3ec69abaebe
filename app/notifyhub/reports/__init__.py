"""Reports, exports and inventory alerts for the point-of-sale data.

Report files are written from rows streamed out of PostgreSQL with a server-side cursor, then
stored in PostgreSQL (:mod:`.files`) and downloaded through signed, expiring links
(:mod:`.links`, :mod:`.routes`); every run is recorded in ``report_runs``. ``registry``
(declared in :mod:`.catalog`) holds the tasks and the download route of the modules below.
"""

from . import alerts, movements, routes, tasks
from .catalog import registry

__all__ = ["alerts", "movements", "registry", "routes", "tasks"]
