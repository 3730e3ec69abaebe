"""What goes into a user's outlook and how it reads in an email or an SMS.

Built from plain rows so the wording can be tested without a database. The stored content is
JSON (amounts as decimal strings, never floats), and ``type`` names the section that leads it:
that is the unit ``optimize_outlook_content`` measures engagement by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

CONTENT_VERSION = 1
#: A bill this close to its due date leads the outlook.
URGENT_BILL_DAYS = 3


@dataclass(frozen=True, slots=True)
class Bill:
    payee: str
    amount: Decimal
    currency: str
    due_date: date


@dataclass(frozen=True, slots=True)
class Goal:
    title: str
    target_amount: Decimal | None
    current_amount: Decimal
    currency: str | None
    target_date: date | None


@dataclass(frozen=True, slots=True)
class Spending:
    currency: str
    total: Decimal
    orders: int


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
#: The generic SMS template appends "Reply STOP to opt out." (23 characters with its space).
SMS_FOOTER_CHARS = 23


def long_date(day: date) -> str:
    """``Monday 1 December``: how a person names a day close at hand (no locale's strftime,
    whose month names depend on the machine)."""
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]}"


def short_date(day: date) -> str:
    """``Wed 3 Dec``, for dates inside a list."""
    return f"{_WEEKDAYS[day.weekday()][:3]} {day.day} {_MONTHS[day.month - 1][:3]}"


def _money(amount: Decimal, currency: str | None) -> str:
    return f"{amount:.2f} {currency}" if currency else f"{amount:.2f}"


def _progress(goal: Goal) -> int | None:
    if not goal.target_amount:
        return None
    return max(0, min(100, int(goal.current_amount * 100 / goal.target_amount)))


def build_outlook(
    name: str,
    outlook_date: date,
    bills: Sequence[Bill],
    goals: Sequence[Goal],
    spending: Sequence[Spending],
) -> dict[str, Any]:
    """The outlook's JSON content; sections without data are left out rather than shown empty."""
    sections: list[dict[str, Any]] = []
    if bills:
        sections.append(
            {
                "type": "bills",
                "items": [
                    {
                        "payee": b.payee,
                        "amount": str(b.amount),
                        "currency": b.currency,
                        "due_date": b.due_date.isoformat(),
                        "days_left": (b.due_date - outlook_date).days,
                    }
                    for b in bills
                ],
            }
        )
    if goals:
        sections.append(
            {
                "type": "goals",
                "items": [
                    {
                        "title": g.title,
                        "progress_pct": _progress(g),
                        "current_amount": str(g.current_amount),
                        "target_amount": None if g.target_amount is None else str(g.target_amount),
                        "currency": g.currency,
                        "target_date": g.target_date.isoformat() if g.target_date else None,
                    }
                    for g in goals
                ],
            }
        )
    if spending:
        sections.append(
            {
                "type": "spending",
                "period_days": 7,
                "items": [
                    {"currency": s.currency, "total": str(s.total), "orders": s.orders}
                    for s in spending
                ],
            }
        )
    urgent = [b for b in bills if (b.due_date - outlook_date).days <= URGENT_BILL_DAYS]
    lead = "bills" if urgent else sections[0]["type"] if sections else "encouragement"
    return {
        "version": CONTENT_VERSION,
        "type": lead,
        "date": outlook_date.isoformat(),
        "greeting": f"Good morning, {name.split()[0] if name.strip() else 'there'}",
        "headline": _headline(lead, urgent, goals, spending),
        "sections": sections,
    }


def _headline(
    lead: str, urgent: Sequence[Bill], goals: Sequence[Goal], spending: Sequence[Spending]
) -> str:
    if lead == "bills" and urgent:
        first = min(urgent, key=lambda b: b.due_date)
        more = f" and {len(urgent) - 1} more" if len(urgent) > 1 else ""
        amount = _money(first.amount, first.currency)
        return f"{first.payee} ({amount}) is due {first.due_date:%b %d}{more}."
    if lead == "bills":
        return "A few bills are coming up this week."
    if lead == "goals":
        best = max(goals, key=lambda g: _progress(g) or 0)
        pct = _progress(best)
        return (
            f"{best.title}: {pct}% of the way there."
            if pct is not None
            else f"Keep going on {best.title}."
        )
    if lead == "spending":
        s = spending[0]
        return f"You spent {_money(s.total, s.currency)} over the last 7 days."
    return "Nothing pressing today: a good day to review your goals."


def render_email(content: dict[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body of the outlook email."""
    lines = [f"{content['greeting']}!", "", content["headline"], ""]
    for section in content["sections"]:
        if section["type"] == "bills":
            lines.append("Bills due soon:")
            lines += [
                f"  - {i['payee']}: {i['amount']} {i['currency']}"
                f" on {short_date(date.fromisoformat(i['due_date']))}"
                for i in section["items"]
            ]
        elif section["type"] == "goals":
            lines.append("Your goals:")
            lines += [
                f"  - {i['title']}: {i['progress_pct']}%"
                if i["progress_pct"] is not None
                else f"  - {i['title']}"
                for i in section["items"]
            ]
        elif section["type"] == "spending":
            lines.append("Spending, last 7 days:")
            lines += [
                f"  - {i['total']} {i['currency']} over {i['orders']} order(s)"
                for i in section["items"]
            ]
        lines.append("")
    subject = f"Your outlook for {long_date(date.fromisoformat(content['date']))}"
    return subject, "\n".join(lines).rstrip() + "\n"


def render_sms(content: dict[str, Any]) -> str:
    """One short SMS (aim: a single segment once the opt-out footer is added): greeting and
    headline only."""
    text = f"{content['greeting']}. {content['headline']}"
    room = 160 - SMS_FOOTER_CHARS
    return text if len(text) <= room else text[: room - 3] + "..."


#: The A/B test the outlook content takes part in while it runs (:mod:`notifyhub.experiments`;
#: started with ``create_experiment(conn, CONTENT_EXPERIMENT, CONTENT_VARIANTS)``).
CONTENT_EXPERIMENT = "outlook_content"
#: ``standard``: every section; ``focus``: the lead section only (a shorter outlook).
CONTENT_VARIANTS = ("standard", "focus")


def apply_variant(content: dict[str, Any], variant: str) -> dict[str, Any]:
    """The outlook as ``variant`` shows it, labelled with the variant (kept with the outlook,
    so views and ratings count for the variant it showed)."""
    out = {**content, "variant": variant}
    if variant == "focus":
        out["sections"] = list(content["sections"][:1])
    return out
