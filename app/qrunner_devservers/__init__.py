"""Development servers: a private Redis and PostgreSQL under ``./.qrunner/`` for a laptop, the
demo and the test suite. Not part of the runtime: ``qrunner`` never imports this package.

``python -m qrunner_devservers ARGS`` (what ``bin/qrunner`` runs) starts what is missing, puts
the URLs in the environment and hands over to qrunner's command line.
"""

from __future__ import annotations

from .embedded import ensure_postgres, ensure_redis, stop_all

__all__ = ["ensure_postgres", "ensure_redis", "stop_all"]
