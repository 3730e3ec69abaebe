"""Masking of personal data and secrets in free text before it is logged or stored.

Exception messages are written to logs, to a job's ``last_error`` and to its error history, all
of which outlive the job and are read by people who should not see a customer's contact
details or a provider's credentials. Provider errors often echo what they were sent ("The 'To'
number +14155550123 is not a valid phone number"), so every error text the runtime keeps goes
through :func:`mask` first. Enough is kept to tell two values apart while debugging.

Masked, in this order:

- email addresses: ``jane@example.com`` -> ``j***@example.com`` (the domain stays);
- E.164 phone numbers (``+`` and 8 to 15 digits, separators allowed):
  ``+14155550123`` -> ``+1******0123``;
- long tokens: a run of 24 or more letters, digits, ``_`` or ``-`` holding both letters and
  digits (API keys, account SIDs, bearer tokens, UUIDs) -> its first 4 characters and ``***``.

Masking is idempotent: masked text comes out unchanged.
"""

from __future__ import annotations

import re

_ADDRESS_RE = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")
_PHONE_RE = re.compile(r"\+\d(?:[\s.\-()]{0,2}\d){7,14}(?!\d)")
_TOKEN_RE = re.compile(r"[\w\-]{24,}")
_LETTER_RE = re.compile(r"[A-Za-z]")
_DIGIT_RE = re.compile(r"\d")


def mask_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return f"+{digits[:1]}{'*' * (len(digits) - 5)}{digits[-4:]}"


def _mask_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if _LETTER_RE.search(token) and _DIGIT_RE.search(token):
        return f"{token[:4]}***"
    return token


def mask(text: str) -> str:
    """``text`` with email addresses, phone numbers and long tokens masked."""
    if not text:
        return text
    if "@" in text:
        text = _ADDRESS_RE.sub(lambda m: mask_address(m.group(0)), text)
    if "+" in text:
        text = _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)
    return _TOKEN_RE.sub(_mask_token, text)
