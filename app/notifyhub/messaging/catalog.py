"""The messaging registry, and every messaging task's queue, rate limit and retry policy in one
table.

Queues and limits follow the systems qrunner replaces (seeds 000, 002-004): critical SMS first,
then daily SMS, reports, education; transactional email without a stated queue goes to
``default``. Backoff doubles from ``backoff_base_s`` per attempt up to ``backoff_cap_s``.

Each task module declares its handlers on :data:`registry` with the values of its spec, e.g.
``@registry.task(**SPECS["send_sms"].declaration(), payload=SmsPayload)``; the table stays the
one place a queue or a limit is read from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qrunner import Registry

#: Every messaging task and the inbound routes (SMS keywords, unsubscribe links).
registry = Registry()


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    queue: str
    rate_limit: str
    max_retries: int
    backoff_base_s: float
    backoff_cap_s: float = 3600.0
    timeout_s: float = 60.0

    def declaration(self) -> dict[str, Any]:
        """The keyword arguments of ``registry.task`` this spec stands for (all but the payload)."""
        return {
            "name": self.name,
            "queue": self.queue,
            "rate_limit": self.rate_limit,
            "max_retries": self.max_retries,
            "backoff_base_s": self.backoff_base_s,
            "backoff_cap_s": self.backoff_cap_s,
            "timeout_s": self.timeout_s,
        }

    def backoff_s(self, attempt: int) -> float:
        """The wait before retrying after ``attempt`` (1-based) failed."""
        delay: float = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** max(0, attempt - 1))
        return delay


SMS_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("send_critical_financial_alert", "sms_critical", "10/m", 3, 60.0, 900.0),
    TaskSpec("send_payment_reminder", "sms_daily", "20/m", 2, 300.0),
    TaskSpec("send_weekly_checkin", "sms_daily", "50/m", 2, 600.0),
    TaskSpec("send_milestone_reminder", "sms_daily", "30/m", 2, 300.0),
    TaskSpec("send_sms", "default", "30/m", 3, 60.0),
)

EMAIL_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("send_monthly_report", "email_reports", "10/m", 3, 900.0),
    TaskSpec("send_career_insights", "email_education", "20/m", 2, 900.0),
    TaskSpec("send_educational_content", "email_education", "30/m", 2, 900.0),
    TaskSpec("send_onboarding_sequence", "email_education", "50/m", 3, 900.0),
    TaskSpec("send_welcome_email", "default", "60/m", 3, 60.0),
    TaskSpec("send_order_confirmation", "default", "60/m", 3, 60.0),
    TaskSpec("send_meeting_invitation", "default", "60/m", 3, 60.0),
    TaskSpec("send_meeting_reminder", "default", "60/m", 3, 60.0),
    TaskSpec("send_goal_milestone", "default", "60/m", 3, 60.0),
    TaskSpec("send_phase_transition", "default", "60/m", 3, 60.0),
    TaskSpec("send_credit_purchase_confirmation", "default", "60/m", 3, 60.0),
    TaskSpec("send_low_credit_alert", "default", "60/m", 3, 60.0),
    TaskSpec("send_email", "default", "60/m", 3, 60.0),
)

#: Push (:mod:`.push_tasks`) and the push -> email -> SMS choice (:mod:`.preferred`).
PUSH_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("send_push", "default", "120/m", 3, 60.0),
    TaskSpec("send_preferred", "default", "60/m", 3, 60.0),
    TaskSpec("register_device", "default", "600/m", 3, 5.0, 60.0),
)

SPECS: dict[str, TaskSpec] = {s.name: s for s in (*SMS_TASKS, *EMAIL_TASKS, *PUSH_TASKS)}
