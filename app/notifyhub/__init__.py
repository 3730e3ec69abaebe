"""notifyhub: the notification app built on qrunner: SMS (Twilio), email (Resend), daily
outlooks, reports and exports, payment webhooks and upkeep, with PostgreSQL.

The application module for the runtime is :mod:`notifyhub.app` (``QRUNNER_APP=notifyhub.app``):
its ``registry`` holds every task, the lifespan that builds the handlers' state, the HTTP
routes, the readiness check, the queue order, the cron file and the app's own commands
(``migrate``, ``demo``).
"""
