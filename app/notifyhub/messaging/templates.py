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

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape
from jinja2.runtime import Context

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


_SENTENCE_END = (".", "!", "?", "…", ")", '"')


def sentence(text: object) -> str:
    """``text`` as a sentence: trimmed, with a full stop added when it has no closing mark.

    Free text from payloads (an alert message, a tip) is followed by more text in the same
    SMS; without a stop it would read as one run-on sentence.
    """
    value = " ".join(str(text).split())
    return value if not value or value.endswith(_SENTENCE_END) else value + "."


_BULLETS = ("- ", "* ", "• ")


def even_bullets(paragraph: object) -> str:
    """``paragraph`` with every bullet line at the same indent (the deepest one it has).

    A body split into paragraphs and trimmed loses the indent of its first line only, so a
    list that opens a paragraph would show its first item out of line with the rest.
    """
    lines = str(paragraph).split("\n")
    bullets = [i for i, line in enumerate(lines) if line.lstrip().startswith(_BULLETS)]
    indent = max((len(lines[i]) - len(lines[i].lstrip()) for i in bullets), default=0)
    for i in bullets:
        lines[i] = " " * indent + lines[i].lstrip()
    return "\n".join(lines)


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
            # Templates ship with the code: no file system check on every message.
            auto_reload=False,
        )
        self._env.filters["sentence"] = sentence
        self._env.filters["even_bullets"] = even_bullets
        self._globals = dict(self._env.globals)
        self._templates: dict[str, Template] = {}

    def _template(self, name: str) -> Template:
        # Templates ship with the code and never change while it runs: each is looked up once
        # (Environment.get_template takes a lock and checks its cache on every call).
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self._env.get_template(name)
        return template

    def _context(self, template: Template, values: dict[str, Any]) -> Context:
        """``template``'s render context for ``values``: the environment's globals are merged
        in here, from a flat copy made once, instead of by Jinja2 from a ChainMap per render
        (that merge was about half of an email's rendering time)."""
        return template.new_context({**self._globals, **values}, shared=True)

    def _render(self, template: Template, values: dict[str, Any], block: str | None = None) -> str:
        """What ``template.render(**values)`` returns (or, with ``block``, that block of the
        template alone), errors included."""
        render = template.root_render_func if block is None else template.blocks[block]
        try:
            return self._env.concat(render(self._context(template, values)))
        except Exception:
            self._env.handle_exception()

    def sms(self, name: str, /, **context: Any) -> str:
        """One line of text: template line breaks are layout, not content."""
        raw = self._render(self._template(f"sms/{name}.txt"), context)
        return " ".join(line.strip() for line in raw.splitlines() if line.strip())

    def email(self, name: str, /, **context: Any) -> RenderedEmail:
        text_template = self._template(f"email/{name}.txt")
        if "subject" not in text_template.blocks:
            raise LookupError(f"email/{name}.txt has no subject block")
        subject = self._render(text_template, context, "subject").strip()
        values = {**context, "subject": subject}
        html = self._render(self._template(f"email/{name}.html"), values)
        text = self._render(text_template, values).strip() + "\n"
        return RenderedEmail(" ".join(subject.split()), html, text)
