"""Amounts, dates and times written the way the recipient's locale writes them.

Five locales cover the users we have (en_US, en_GB, de_DE, fr_FR, ja_JP); anything else falls
back by language, then to en_US. A full CLDR library would be more complete, but messages only
need money, dates and clock times, and a table the tests can read is easier to trust.

French grouping uses a plain space rather than the typographic narrow no-break space: one
non-GSM character turns an SMS into UCS-2 and more than doubles its segment count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from datetime import datetime as DateTime
from decimal import ROUND_HALF_UP, Decimal


@dataclass(frozen=True, slots=True)
class LocaleRules:
    group: str
    decimal: str
    symbol_first: bool
    symbol_space: bool
    date_pattern: str  # keys: d (day), dd (zero-padded), mon (abbr.), m, mm, y
    time_24h: bool


_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

LOCALES: dict[str, LocaleRules] = {
    "en_US": LocaleRules(",", ".", True, False, "{mon} {d}, {y}", False),
    "en_GB": LocaleRules(",", ".", True, False, "{d} {mon} {y}", True),
    "de_DE": LocaleRules(".", ",", False, True, "{dd}.{mm}.{y}", True),
    "fr_FR": LocaleRules(" ", ",", False, True, "{dd}/{mm}/{y}", True),
    "ja_JP": LocaleRules(",", ".", True, False, "{y}年{m}月{d}日", True),
}
_BY_LANGUAGE = {"en": "en_US", "de": "de_DE", "fr": "fr_FR", "ja": "ja_JP"}
DEFAULT_LOCALE = "en_US"

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
#: ISO 4217 minor units where they are not 2.
_MINOR_UNITS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "BHD": 3, "KWD": 3}


def normalize_locale(raw: str | None) -> str:
    """``'en-GB'``, ``'en_gb'`` -> ``'en_GB'``; ``'de'`` -> ``'de_DE'``; unknown -> en_US."""
    if not raw:
        return DEFAULT_LOCALE
    parts = raw.replace("-", "_").split("_")
    language = parts[0].lower()
    if len(parts) > 1:
        candidate = f"{language}_{parts[1].upper()}"
        if candidate in LOCALES:
            return candidate
    return _BY_LANGUAGE.get(language, DEFAULT_LOCALE)


def _group(digits: str, sep: str) -> str:
    head = len(digits) % 3 or 3
    chunks = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return sep.join(chunks)


def format_money(amount: Decimal, currency: str, locale: str) -> str:
    rules = LOCALES[normalize_locale(locale)]
    places = _MINOR_UNITS.get(currency.upper(), 2)
    quantum = Decimal(1).scaleb(-places)
    value = Decimal(amount).quantize(quantum, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    whole, _, frac = f"{abs(value):f}".partition(".")
    number = _group(whole, rules.group) + (rules.decimal + frac if places else "")
    symbol = SYMBOLS.get(currency.upper())
    if symbol is None:
        return (
            f"{sign}{currency.upper()} {number}"
            if rules.symbol_first
            else f"{sign}{number} {currency.upper()}"
        )
    space = " " if rules.symbol_space else ""
    if rules.symbol_first:
        return f"{sign}{symbol}{space}{number}"
    return f"{sign}{number}{space}{symbol}"


def format_date(value: date, locale: str) -> str:
    rules = LOCALES[normalize_locale(locale)]
    return rules.date_pattern.format(
        d=value.day,
        dd=f"{value.day:02d}",
        mon=_MONTHS_EN[value.month - 1],
        m=value.month,
        mm=f"{value.month:02d}",
        y=value.year,
    )


def format_time(value: datetime, locale: str) -> str:
    rules = LOCALES[normalize_locale(locale)]
    if rules.time_24h:
        return f"{value.hour:02d}:{value.minute:02d}"
    hour = value.hour % 12 or 12
    return f"{hour}:{value.minute:02d} {'AM' if value.hour < 12 else 'PM'}"


def zone_name(zone: tzinfo, at: datetime) -> str:
    """The zone a local time is written in: its IANA name (``Europe/Berlin``), else ``UTC`` or
    the offset (``UTC-05:00``) for the fixed offsets used when a recipient's zone is unknown.

    Abbreviations (CST, IST) are avoided: several zones share each of them.
    """
    key = getattr(zone, "key", None)
    if isinstance(key, str) and key:
        return key
    offset = at.astimezone(zone).utcoffset() or timedelta(0)
    if not offset:
        return "UTC"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _duration(minutes: int) -> str:
    hours, rest = divmod(minutes, 60)
    parts = []
    if hours:
        parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    if rest or not hours:
        parts.append(f"{rest} minute{'s' if rest != 1 else ''}")
    return " ".join(parts)


#: Closer than this, a reminder counts the minutes; further, it names the day and the time.
COUNTDOWN_LIMIT = timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class Formatter:
    """Bound to one recipient's locale and zone; templates call ``fmt.money(...)`` etc."""

    locale: str
    zone: tzinfo

    def money(self, amount: Decimal | str | int, currency: str) -> str:
        return format_money(Decimal(str(amount)), currency, self.locale)

    def date(self, value: date) -> str:
        return format_date(value, self.locale)

    def datetime(self, value: DateTime) -> str:
        local = value.astimezone(self.zone)
        return f"{format_date(local.date(), self.locale)} {format_time(local, self.locale)}"

    def time(self, value: DateTime) -> str:
        return format_time(value.astimezone(self.zone), self.locale)

    def zone_name(self, value: DateTime) -> str:
        return zone_name(self.zone, value)

    def when(self, value: DateTime) -> str:
        """Date, time and zone: ``Mar 1, 2025 9:00 AM (America/New_York)``."""
        return f"{self.datetime(value)} ({self.zone_name(value)})"

    def until(self, value: DateTime, reference: DateTime) -> str:
        """How far ``value`` is from ``reference``, as a reminder says it.

        ``in 55 minutes`` / ``in 1 hour 5 minutes`` when it is close; otherwise the local day
        and time: ``today at 18:00 (Europe/Berlin)``, ``tomorrow at 09:00 (Europe/Berlin)``,
        ``on 03.03.2025 at 09:00 (Europe/Berlin)``. Days are counted in the recipient's zone,
        so "tomorrow" means their tomorrow. ``reference`` is fixed by the caller (not read
        from the clock here) so that a retried message renders the same text.
        """
        remaining = value - reference
        if timedelta(0) <= remaining < COUNTDOWN_LIMIT:
            return f"in {_duration(round(remaining.total_seconds() / 60))}"
        local, ref_day = value.astimezone(self.zone), reference.astimezone(self.zone).date()
        days = (local.date() - ref_day).days
        day = {0: "today", 1: "tomorrow"}.get(days, f"on {format_date(local.date(), self.locale)}")
        return f"{day} at {format_time(local, self.locale)} ({self.zone_name(value)})"
