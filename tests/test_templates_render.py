"""Every SMS and email template, rendered with and without each optional field, reads right.

Given a template and a context, when it is rendered with every optional field present, with all
of them absent, and with each one absent in turn, then the text has no glued sentences and no
double blank lines, an SMS keeps its opt-out footer and the segment count its alphabet allows,
and each optional line appears exactly when its field is given. The last tests send through the
real worker to the fake Twilio and Resend servers.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from html import unescape
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from messaging_fixtures import Env, messaging_env, wait_for
from notifyhub.messaging.formatting import Formatter
from notifyhub.messaging.templates import TEMPLATE_DIR, Templates
from notifyhub.outlook.content import build_outlook, render_email, render_sms
from notifyhub.providers.sms import segments

pytestmark = pytest.mark.timeout(60)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2025, 3, 5, 14, 0, tzinfo=UTC)  # 09:00 in New York, 15:00 in Berlin
TEMPLATES = Templates()


@dataclass(frozen=True)
class Case:
    """A template, the context it always needs, and its optional fields: for each, the value
    that shows it, the value that leaves it out, and text that must appear only when shown."""

    name: str
    required: dict[str, Any]
    optional: dict[str, tuple[Any, Any, str]] = field(default_factory=dict)

    def variants(self) -> Iterator[tuple[str, dict[str, Any], set[str]]]:
        """(label, context, names of the optional fields shown)."""
        every = set(self.optional)
        yield "all", self.context(every), every
        yield "none", self.context(set()), set()
        for left_out in self.optional:
            shown = every - {left_out}
            yield f"without_{left_out}", self.context(shown), shown

    def context(self, shown: set[str]) -> dict[str, Any]:
        ctx = dict(self.required)
        for key, (present, absent, _) in self.optional.items():
            value = present if key in shown else absent
            if "+" in key:  # fields that only show together: a dict of each one's value
                ctx.update(value)
            else:
                ctx[key] = value
        return ctx


SMS_CASES = [
    Case(
        "critical_financial_alert",
        {"message": "Your account is overdrawn", "currency": "USD", "alert_type": "overdraft"},
        {
            "amount": (Decimal("1000"), None, "Amount: $1,000.00."),
            "account_last4": ("1234", None, "Account ending 1234."),
        },
    ),
    Case(
        "payment_reminder",
        {"payee": "City Power", "amount": Decimal("84.2"), "currency": "USD"}
        | {"due_date": date(2025, 3, 8)},
    ),
    Case(
        "weekly_checkin",
        {"week_of": date(2025, 3, 3)},
        {
            "score": (71, None, "your wellness score this week is 71"),
            "tip": ("Move one subscription to yearly billing", None, "Tip: Move one"),
        },
    ),
    Case(
        "milestone_reminder",
        {"milestone": "Half way", "currency": "USD"},
        {
            "goal": ("Emergency fund", None, "(Emergency fund)"),
            "due_date": (date(2025, 4, 1), None, "is due Apr 1, 2025"),
            "saved+target": (
                {"saved": Decimal("500"), "target": Decimal("1000")},
                {"saved": Decimal("500"), "target": None},
                "Saved so far: $500.00 of $1,000.00.",
            ),
        },
    ),
    Case("message", {"body": "Your code is 123456."}),
]

EMAIL_CASES = [
    Case(
        "career_insights",
        {"headline": "Your market this month", "insights": ["Demand is up 8%", "Pay is flat"]}
        | {"currency": "USD"},
        {"salary_median": (Decimal("85000"), None, "Median salary for your role: $85,000.00")},
    ),
    Case(
        "credit_purchase_confirmation",
        {"credits": 50, "amount": Decimal("25"), "currency": "USD", "balance": 53}
        | {"reference": "PAY-1"},
    ),
    Case(
        "educational_content",
        {"topic": "budgeting", "title": "The 50/30/20 rule", "summary": "Split your income."},
        {"url": ("https://learn.example.test/1", None, "Read the full lesson")},
    ),
    Case(
        "goal_milestone",
        {"milestone": "Half way", "currency": "USD"},
        {
            "goal": ("Emergency fund", None, "on your way to Emergency fund"),
            "saved+target": (
                {"saved": Decimal("500"), "target": Decimal("1000")},
                {"saved": None, "target": Decimal("1000")},
                "$500.00 of $1,000.00 saved.",
            ),
        },
    ),
    Case("low_credit_alert", {"balance": 3, "threshold": 5}),
    Case(
        "meeting_invitation",
        {"title": "Coaching", "starts_at": START, "ends_at": START + timedelta(minutes=30)},
        {
            "location": ("Room 4", None, "Where: Room 4"),
            "url": ("https://meet.example.test/x", None, "https://meet.example.test/x"),
        },
    ),
    Case(
        "meeting_reminder",
        {"title": "Coaching", "starts_at": START, "window": "1h"},
        {
            "location": ("Room 4", None, "Where: Room 4"),
            "url": ("https://meet.example.test/x", None, "https://meet.example.test/x"),
            "reference_at": (START - timedelta(minutes=55), None, "in 55 minutes"),
        },
    ),
    Case(
        "message",
        {"email_subject": "Stock"},
        {"paragraphs": (["Hello.", "- one\n  - two"], ["Hello."], "two")},
    ),
    Case(
        "monthly_report",
        {"month_label": "March 2025", "income": 5200, "spending": 3890, "savings": 1310}
        | {"currency": "USD"},
        {"categories": ([{"name": "Rent", "amount": 1800}], [], "Top spending")},
    ),
    Case(
        "onboarding",
        {"step_title": "Set a goal", "step_body": "Pick one thing.", "step": 0, "steps": 3},
    ),
    Case(
        "order_confirmation",
        {"number": "A-1001", "business": "Corner Shop", "total": Decimal("9"), "currency": "USD"}
        | {"placed_at": START},
        {"items": ([{"quantity": 2, "name": "Green tea", "line_total": 9}], [], "2 x Green tea")},
    ),
    Case(
        "phase_transition",
        {"from_phase": "setup", "to_phase": "tracking"},
        {"note": ("Your coach will check in weekly.", None, "Your coach will check in")},
    ),
    Case("welcome", {}),
]


def base_context(fmt: Formatter | None = None) -> dict[str, Any]:
    return {
        "name": "Ann",
        "app_name": "Mingus",
        "support_email": "help@example.test",
        "fmt": fmt or Formatter("en_US", NY),
        "lang": "en",
        "unsubscribe_url": "https://hooks.example.test/unsubscribe?token=t",
    }


def params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(case, ctx, shown, id=f"{case.name}-{label}")
        for case in cases
        for label, ctx, shown in case.variants()
    ]


def reference_segments(text: str) -> int:
    """Segments by the textbook rule: GSM-7 160 alone / 153 per part (extension characters
    count twice), otherwise UCS-2 70 / 67."""
    basic = set(
        "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
        "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
    )
    extended = set("^{}\\[~]|€\f")
    if all(c in basic or c in extended for c in text):
        units = sum(2 if c in extended else 1 for c in text)
        return 1 if units <= 160 else math.ceil(units / 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def visible(html: str) -> str:
    """The words a reader sees in ``html``: tags dropped, spaces collapsed, entities decoded."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


GLUED = re.compile(r"[a-z0-9)%][.!?][A-Z]")  # "...$1,000.00.Reply": a lost space
FOOTER = re.compile(r"[.!?] Reply (HELP for help, )?STOP to opt out\.$")


def test_every_template_file_has_a_case() -> None:
    # Given the template directory, then each SMS and email template is covered below
    sms = {p.stem for p in (TEMPLATE_DIR / "sms").glob("*.txt") if not p.stem.startswith("_")}
    email = {
        p.stem
        for p in (TEMPLATE_DIR / "email").glob("*.txt")
        if p.stem != "base" and not p.stem.startswith("_")
    }
    assert sms == {c.name for c in SMS_CASES}
    assert email == {c.name for c in EMAIL_CASES}


@pytest.mark.parametrize(("case", "ctx", "shown"), params(SMS_CASES))
def test_sms_reads_as_separate_sentences_with_its_footer(
    case: Case, ctx: dict[str, Any], shown: set[str]
) -> None:
    # When the SMS is rendered
    text = TEMPLATES.sms(case.name, **base_context(), **ctx)

    # Then it is one line of sentences, each followed by one space, ending in the opt-out footer
    assert "\n" not in text and "  " not in text and text == text.strip()
    assert not GLUED.search(text), text
    assert FOOTER.search(text), text
    # And each optional part shows exactly when its field is given
    for key, (_, _, marker) in case.optional.items():
        assert (marker in text) is (key in shown), (key, text)
    # And it is billed as the segments its alphabet allows, at most two for these texts
    assert segments(text) == reference_segments(text) <= 2


@pytest.mark.parametrize(
    ("locale", "zone", "alphabet", "expected"),
    [
        ("en_US", NY, "GSM-7", 1),
        ("de_DE", BERLIN, "GSM-7", 1),  # "€" is a GSM-7 extension character: two septets
        ("ja_JP", ZoneInfo("Asia/Tokyo"), "UCS-2", 2),  # "年" forces UCS-2: 70 / 67 units
    ],
)
def test_sms_segments_follow_the_alphabet(
    locale: str, zone: ZoneInfo, alphabet: str, expected: int
) -> None:
    # Given a payment reminder in the recipient's locale
    fmt = Formatter(locale, zone)
    ctx = base_context(fmt) | {"name": "Christopher"}
    text = TEMPLATES.sms(
        "payment_reminder",
        **ctx,
        payee="Stadtwerke Musterstadt",
        amount=Decimal("84.2"),
        currency="EUR",
        due_date=date(2025, 3, 8),
    )
    # Then its segment count is the one its alphabet gives
    gsm = reference_segments(text) == segments(text)
    assert gsm and segments(text) == expected, (alphabet, len(text), text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets
        ("€" * 81, 2),
        ("é" * 160, 1),  # in the GSM-7 basic table
        ("ü" * 70 + "ł", 2),  # ł is not: UCS-2, 71 units
        ("ł" * 70, 1),
        ("ł" * 134, 2),
        ("ł" * 135, 3),
    ],
)
def test_segment_boundaries(text: str, expected: int) -> None:
    assert segments(text) == reference_segments(text) == expected


@pytest.mark.parametrize(("case", "ctx", "shown"), params(EMAIL_CASES))
def test_email_text_and_html_read_right(case: Case, ctx: dict[str, Any], shown: set[str]) -> None:
    # When the email is rendered
    email = TEMPLATES.email(case.name, **base_context(), **ctx)

    # Then the subject is one human line (no ISO dates) and the text has single blank lines,
    # no trailing spaces, no glued sentences, and the footer
    assert email.subject and "\n" not in email.subject and "  " not in email.subject
    assert not re.search(r"\d{4}-\d{2}-\d{2}", email.subject + email.text)
    assert "\n\n\n" not in email.text and not email.text.startswith("\n")
    assert all(line == line.rstrip() for line in email.text.splitlines())
    assert not GLUED.search(email.text), email.text
    assert email.text.endswith("\nUnsubscribe: https://hooks.example.test/unsubscribe?token=t\n")
    assert "\n\n--\n" in email.text
    # And each optional part shows in both parts exactly when its field is given
    for key, (_, _, marker) in case.optional.items():
        assert (marker in email.text) is (key in shown), (key, email.text)
        if key != "url":  # a link's text differs between the two parts
            assert (" ".join(marker.split()) in visible(email.html)) is (key in shown), key


# -- times carry their zone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (Formatter("en_US", NY), "Mar 5, 2025 9:00 AM (America/New_York)"),
        (Formatter("de_DE", BERLIN), "05.03.2025 15:00 (Europe/Berlin)"),
        (Formatter("en_GB", timezone(timedelta(hours=-5))), "5 Mar 2025 09:00 (UTC-05:00)"),
        (Formatter("en_GB", UTC), "5 Mar 2025 14:00 (UTC)"),
    ],
)
def test_meeting_and_order_times_name_their_zone(fmt: Formatter, expected: str) -> None:
    ctx = base_context(fmt)
    # Given a meeting invitation, a reminder without a reference instant and an order receipt
    invitation = TEMPLATES.email(
        "meeting_invitation",
        **ctx,
        title="Coaching",
        starts_at=START,
        ends_at=START + timedelta(minutes=30),
        location=None,
        url=None,
    )
    reminder = TEMPLATES.email(
        "meeting_reminder",
        **ctx,
        title="Coaching",
        starts_at=START,
        window="1h",
        location=None,
        url=None,
    )
    receipt = TEMPLATES.email(
        "order_confirmation",
        **ctx,
        number="A-1",
        business="Corner Shop",
        items=[],
        total=Decimal("9"),
        currency="USD",
        placed_at=START,
    )
    # Then every time is written with the zone it is in
    zone = expected[expected.index("(") :]
    assert invitation.subject == f"Invitation: Coaching, {expected}"
    assert f"When: {expected.removesuffix(' ' + zone)} - " in invitation.text
    assert invitation.text.split("When: ")[1].split("\n")[0].endswith(zone)
    assert zone in invitation.html
    assert reminder.subject == f"Reminder: Coaching, {expected}"
    assert f"Placed {expected}." in receipt.text and f"Placed {expected}." in receipt.html


@pytest.mark.parametrize(
    ("reference", "fmt", "subject"),
    [
        (START - timedelta(minutes=55), Formatter("en_US", NY), "in 55 minutes"),
        (START - timedelta(minutes=70), Formatter("en_US", NY), "in 1 hour 10 minutes"),
        (START - timedelta(hours=1), Formatter("en_US", NY), "in 1 hour"),
        (
            START - timedelta(hours=24),
            Formatter("de_DE", BERLIN),
            "tomorrow at 15:00 (Europe/Berlin)",
        ),
        (
            # 23 h before 09:00 in New York is 10:00 the day before: still "tomorrow" there
            START - timedelta(hours=23),
            Formatter("en_US", NY),
            "tomorrow at 9:00 AM (America/New_York)",
        ),
        (
            # 49 h before 08:00 in Tokyo (23:00 UTC) is 07:00 two local days earlier
            datetime(2025, 3, 4, 23, 0, tzinfo=UTC) - timedelta(hours=49),
            Formatter("en_GB", ZoneInfo("Asia/Tokyo")),
            "on 5 Mar 2025 at 08:00 (Asia/Tokyo)",
        ),
    ],
)
def test_meeting_reminder_says_the_real_remaining_time(
    reference: datetime, fmt: Formatter, subject: str
) -> None:
    starts = START if "Tokyo" not in subject else datetime(2025, 3, 4, 23, 0, tzinfo=UTC)
    email = TEMPLATES.email(
        "meeting_reminder",
        **base_context(fmt),
        title="Coaching",
        starts_at=starts,
        window="1h",
        location=None,
        url=None,
        reference_at=reference,
    )
    assert email.subject == f"Reminder: Coaching {subject}"
    assert f"Coaching starts {subject}" in email.text
    if subject.startswith("in "):
        assert f"{subject}, at {fmt.time(starts)} ({fmt.zone_name(starts)})." in email.text


# -- the outlook email ---------------------------------------------------------------------------


def test_outlook_subject_and_dates_are_human() -> None:
    # Given Monday 1 December's outlook with a bill due on Wednesday
    from notifyhub.outlook.content import Bill

    content = build_outlook(
        "Ava Johnson",
        date(2025, 12, 1),
        [Bill("Rent", Decimal("1200.00"), "USD", date(2025, 12, 3))],
        [],
        [],
    )
    # When it is rendered
    subject, text = render_email(content)
    # Then the subject names the day as a person would, and so does the bill line
    assert subject == "Your outlook for Monday 1 December"
    assert "  - Rent: 1200.00 USD on Wed 3 Dec" in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", subject + text)


def test_outlook_sms_fits_one_segment_with_the_footer() -> None:
    content = build_outlook("Ava", date(2025, 12, 1), [], [], [])
    content["headline"] = "x" * 300
    body = render_sms(content)
    text = TEMPLATES.sms("message", **base_context(), body=body)
    assert text.endswith("... Reply STOP to opt out.") and segments(text) == 1


# -- through the worker to the fake providers ---------------------------------------------------


@pytest.fixture
async def env(redis_url: str, database_url: str) -> AsyncIterator[Env]:
    async with messaging_env(redis_url, database_url) as e:
        yield e


async def test_sent_sms_keep_their_spaces_and_footer(env: Env) -> None:
    # Given a consented user
    ann = await env.user("Ann Lee", email="ann@example.com", phone="+15555550123")
    # When the three SMS with an optional field that used to swallow the line break are sent
    jobs = [
        (
            "send_critical_financial_alert",
            {"alert_type": "overdraft", "message": "Overdrawn", "amount": "1000"},
        ),
        ("send_milestone_reminder", {"milestone": "Half way", "saved": "5", "target": "10"}),
        ("send_weekly_checkin", {"week_of": "2025-03-03", "tip": "Cancel one subscription"}),
    ]
    for task, payload in jobs:
        await env.finished(await env.enqueue(task, {"user_id": ann, **payload}))
    sms = await env.twilio.wait_for_messages(3)

    # Then each reads as separate sentences and ends with the footer
    app = env.state.messaging.options.app_name
    assert sorted(m.body for m in sms) == [
        "Hi Ann, reminder: Half way. Saved so far: $5.00 of $10.00. Reply STOP to opt out.",
        f"Hi Ann, time for your weekly {app} check-in. Tip: Cancel one subscription."
        " Reply STOP to opt out.",
        f"{app} ALERT: Overdrawn. Amount: $1,000.00. Reply HELP for help, STOP to opt out.",
    ]


async def test_expiring_products_list_keeps_every_item_indented(env: Env) -> None:
    # Given an expiry digest shaped as the inventory check writes it: heading, blank line,
    # indented items, a count of the rest, a closing line
    owner = await env.user("Omar Ali", email="omar@example.com", phone=None)
    body = (
        "Products at Corner Shop expiring soon:\n\n"
        "  - Sourdough loaf (SKU BREAD-SD), 30 in stock: expires in 2 days\n"
        "  - Milk (SKU MILK-1), 12 in stock: EXPIRED\n"
        "  ... and 1 more\n\n"
        "Sell, discount or remove them before they go to waste.\n"
    )
    # When it is sent through the email task
    payload = {"user_id": owner, "subject": "3 product(s) expiring", "body": body}
    await env.finished(await env.enqueue("send_email", payload | {"template": "expiring_products"}))
    (email,) = await env.resend.wait_for_messages(1)

    # Then every listed product, the first included, is indented alike in text and HTML
    items = [line for line in email.text.splitlines() if "(SKU " in line]
    assert len(items) == 2 and all(line.startswith("  - ") for line in items), email.text
    assert "\n  ... and 1 more\n" in email.text
    assert '<p style="white-space:pre-wrap;">  - Sourdough loaf' in (email.html or "")


async def test_sent_invitation_and_receipt_show_the_zone(env: Env) -> None:
    # Given a Berlin user with a meeting and an order
    eva = await env.user(
        "Eva Roth",
        email="eva@example.de",
        phone=None,
        zone="Europe/Berlin",
        locale="de-DE",
        country="DE",
    )
    meeting = await env.pool.fetchval(
        "INSERT INTO meetings (title, starts_at, ends_at) VALUES ('Coaching', $1, $2) RETURNING id",
        START + timedelta(days=1),
        START + timedelta(days=1, minutes=30),
    )
    await env.pool.execute(
        "INSERT INTO meeting_participants (meeting_id, user_id) VALUES ($1, $2)", meeting, eva
    )
    # When the invitation is sent
    await env.finished(
        await env.enqueue("send_meeting_invitation", {"user_id": eva, "meeting_id": meeting})
    )
    (email,) = await env.resend.wait_for_messages(1)

    # Then its subject and body say which zone the time is in
    assert email.subject == "Invitation: Coaching, 06.03.2025 15:00 (Europe/Berlin)"
    assert "When: 06.03.2025 15:00 - 15:30 (Europe/Berlin)" in email.text

    async def delivered() -> bool:
        return bool(await env.log_rows(user_id=eva))

    await wait_for(delivered, what="the delivery log row")
