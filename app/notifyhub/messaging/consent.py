"""Who may be messaged on which channel: pure rules, checked right before every provider call.

Consent is judged as in the ``current_consents`` view: consented iff there is an opt-in and no
opt-out at or after it (an opt-out at the same instant wins: when in doubt, do not send).

SMS (TCPA and carrier rules): only with a recorded opt-in, no later opt-out, and the number not
on the suppression list (carrier STOP, invalid number).

Email depends on what the message is and where the recipient lives:

==============  =========================================  ==================================
category        opt-in jurisdictions (and unknown country)  elsewhere
==============  =========================================  ==================================
required        allowed unless the address is suppressed    allowed unless suppressed
transactional   consented                                   allowed unless opted out
marketing       consented                                   consented
==============  =========================================  ==================================

*required* is a message the recipient just asked for by acting (an order or purchase receipt);
*transactional* is about their account (welcome, meetings, low balance, reports); *marketing* is
content they subscribe to (insights, education, onboarding tips). Opt-in jurisdictions are the
EU/EEA, the UK and Switzerland (GDPR/PECR), Canada (CASL) and Australia (Spam Act). An unknown
country is treated as opt-in, the stricter reading. A suppressed address (hard bounce,
complaint) blocks every category.

Push needs an opt-in whatever the category (the app asks, as iOS and Android 13+ make it ask
for the permission anyway), no later opt-out, and a registered device.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

EU_EEA = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE"
    " IS LI NO".split()
)
OPT_IN_COUNTRIES = EU_EEA | {"GB", "CH", "CA", "AU"}


class Category(StrEnum):
    REQUIRED = "required"
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


@dataclass(frozen=True, slots=True)
class ChannelConsent:
    opted_in_at: datetime | None = None
    opted_out_at: datetime | None = None

    @property
    def consented(self) -> bool:
        return self.opted_in_at is not None and (
            self.opted_out_at is None or self.opted_out_at < self.opted_in_at
        )

    @property
    def opted_out(self) -> bool:
        return self.opted_out_at is not None and (
            self.opted_in_at is None or self.opted_out_at >= self.opted_in_at
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""


ALLOW = Verdict(True)


def email_opt_in_required(country: str | None) -> bool:
    return country is None or country.upper() in OPT_IN_COUNTRIES


def sms_verdict(*, has_phone: bool, consent: ChannelConsent, suppressed: bool) -> Verdict:
    if not has_phone:
        return Verdict(False, "no phone number")
    if suppressed:
        return Verdict(False, "number suppressed")
    if consent.opted_out:
        return Verdict(False, "opted out of sms")
    if not consent.consented:
        return Verdict(False, "no sms opt-in")
    return ALLOW


def email_verdict(
    *,
    category: Category,
    country: str | None,
    has_address: bool,
    consent: ChannelConsent,
    suppressed: bool,
) -> Verdict:
    if not has_address:
        return Verdict(False, "no email address")
    if suppressed:
        return Verdict(False, "address suppressed")
    if category is Category.REQUIRED:
        return ALLOW
    if consent.opted_out:
        return Verdict(False, "opted out of email")
    if category is Category.MARKETING or email_opt_in_required(country):
        if not consent.consented:
            where = "opt-in jurisdiction" if email_opt_in_required(country) else "marketing"
            return Verdict(False, f"no email opt-in ({where})")
    return ALLOW


def push_verdict(*, has_device: bool, consent: ChannelConsent) -> Verdict:
    if consent.opted_out:
        return Verdict(False, "opted out of push")
    if not consent.consented:
        return Verdict(False, "no push opt-in")
    if not has_device:
        return Verdict(False, "no registered device")
    return ALLOW
