"""Masking of phone numbers and email addresses before they reach a log line or an exception.

Logs and dead-letter records outlive the messages they describe and are read by people who have
no business seeing a customer's contact details, so anything that may be logged passes through
here first. Enough is kept to tell two recipients apart while debugging (``+1******4567``,
``j***@example.com``).
"""

from __future__ import annotations

import re

# E.164 numbers and loose national forms: 7+ digits, optionally with a leading "+".
_PHONE_RE = re.compile(r"\+?\d[\d\-\s().]{5,}\d")
_EMAIL_RE = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")


def mask_phone(number: str) -> str:
    """``+15551234567`` -> ``+1******4567``: the country prefix and the last four digits."""
    digits_only = re.sub(r"[^\d+]", "", number)
    if len(digits_only) <= 6:
        return "*" * len(digits_only)
    head = digits_only[:2]
    tail = digits_only[-4:]
    return f"{head}{'*' * (len(digits_only) - 6)}{tail}"


def mask_email(address: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``: the domain stays, the mailbox does not."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"


def redact_text(text: str) -> str:
    """Masks every phone number and email address inside free text (provider error messages)."""
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: _mask_phone_match(m.group(0)), text)


def _mask_phone_match(candidate: str) -> str:
    digits = sum(ch.isdigit() for ch in candidate)
    # Short digit runs are amounts, codes or dates, not numbers worth hiding.
    return mask_phone(candidate) if digits >= 7 else candidate
