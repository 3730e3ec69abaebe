"""Message templates: Jinja2 files under ``handlers/templates/{sms,email}``.

HTML is autoescaped (names and amounts come from users and payloads); plain-text parts and SMS
are not, since escaping would only garble them. Every email has an HTML and a plain-text part
built on one base layout each, and its subject is the ``subject`` block of its text template.
Undefined variables raise instead of rendering blank, so a payload missing a field fails the
job visibly rather than texting "Your bill of  is due".

Rendering is deterministic: the same job renders the same bytes on every attempt, which is what
lets a retried email reuse its Idempotency-Key (the provider refuses a changed payload).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


class Templates:
    def __init__(self, directory: Path = TEMPLATE_DIR) -> None:
        self._env = Environment(
            loader=FileSystemLoader(str(directory)),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def sms(self, name: str, /, **context: Any) -> str:
        """One line of text: template line breaks are layout, not content."""
        raw = self._env.get_template(f"sms/{name}.txt").render(**context)
        return " ".join(line.strip() for line in raw.splitlines() if line.strip())

    def email(self, name: str, /, **context: Any) -> RenderedEmail:
        text_template = self._env.get_template(f"email/{name}.txt")
        subject_block = text_template.blocks.get("subject")
        if subject_block is None:
            raise LookupError(f"email/{name}.txt has no subject block")
        subject = "".join(subject_block(text_template.new_context(context))).strip()
        html = self._env.get_template(f"email/{name}.html").render(subject=subject, **context)
        text = text_template.render(subject=subject, **context).strip() + "\n"
        return RenderedEmail(" ".join(subject.split()), html, text)
