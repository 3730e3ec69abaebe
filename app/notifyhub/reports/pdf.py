"""PDF reports laid out with fpdf2: landscape A4 tables under a page header naming the business,
the report and its period, column headings repeated on every page, a bold totals row, and
"Page N of M" in every footer.

Column widths follow the first batch of rows (longest text, capped), so a report of short codes
and amounts is not stretched like one of long names. A row never splits across pages: a row
that would cross the bottom margin starts the next page (which draws the headings again).

fpdf2 keeps the document in memory until it is written out, so a PDF suits reports a person
reads (thousands of rows); bulk exports are better asked for as CSV or XLSX. The built-in
Helvetica covers Latin-1: other characters print as "?" rather than failing the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from .writers import Heading, cell_text

ROW_MM = 6.0
MAX_COLUMN_CHARS = 32
_FONT = "Helvetica"


def latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return latin1(cell_text(value))


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


@dataclass(slots=True)
class _Table:
    title: str
    columns: Sequence[str]
    widths: list[float] = field(default_factory=list)


class _Document(FPDF):
    def __init__(self, heading: Heading) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self.heading = heading
        self.current: _Table | None = None
        self.set_auto_page_break(auto=True, margin=15)
        self.set_title(latin1(f"{heading.title}: {heading.business}, {heading.period}"))
        self.set_creator("notifyhub")

    def header(self) -> None:
        self.set_font(_FONT, "B", 13)
        self.cell(0, 7, latin1(self.heading.business), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font(_FONT, "", 10)
        self.cell(
            0,
            5,
            latin1(f"{self.heading.title} - {self.heading.period}"),
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        self.ln(3)
        if self.current is not None and self.current.widths:
            self.draw_headings(self.current)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(_FONT, "I", 8)
        self.cell(0, 5, f"Page {self.page_no()} of {{nb}}", align="C")

    def draw_headings(self, table: _Table) -> None:
        self.set_font(_FONT, "B", 9)
        self.set_fill_color(225, 228, 235)
        for name, width in zip(table.columns, table.widths, strict=True):
            self.cell(width, ROW_MM, self.fit(latin1(name), width), border=1, fill=True)
        self.ln(ROW_MM)
        self.set_font(_FONT, "", 9)

    def fit(self, text: str, width: float) -> str:
        """``text`` cut with "..." to fit in a cell of ``width`` mm."""
        room = width - 2 * self.c_margin
        if self.get_string_width(text) <= room:
            return text
        while text and self.get_string_width(text + "...") > room:
            text = text[:-1]
        return text + "..."

    def draw_row(self, table: _Table, row: Sequence[Any], bold: bool = False) -> None:
        if self.will_page_break(ROW_MM):
            self.add_page()
        self.set_font(_FONT, "B" if bold else "", 9)
        for value, width in zip(row, table.widths, strict=True):
            align = "R" if _numeric(value) else "L"
            self.cell(width, ROW_MM, self.fit(_text(value), width), border=1, align=align)
        self.ln(ROW_MM)


class PdfWriter:
    """A :class:`~notifyhub.reports.writers.RowWriter` producing one PDF."""

    def __init__(self, path: Path, heading: Heading) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._doc = _Document(heading)
        self._doc.add_page()

    def _layout(self, table: _Table, sample: Sequence[Sequence[Any]]) -> None:
        if table.widths:
            return
        chars = [max(len(c), 4) for c in table.columns]
        for row in sample:
            for i, value in enumerate(row):
                chars[i] = max(chars[i], min(len(_text(value)), MAX_COLUMN_CHARS))
        total = sum(chars)
        usable = self._doc.epw
        table.widths = [usable * c / total for c in chars]
        self._doc.draw_headings(table)

    def _close_table(self) -> None:
        """An empty table still shows its headings."""
        if self._doc.current is not None:
            self._layout(self._doc.current, [])

    def start_table(self, title: str, columns: Sequence[str]) -> None:
        doc = self._doc
        if doc.current is not None:
            self._close_table()
            doc.ln(4)
        doc.current = None  # a title near the bottom starts the next page without old headings
        if doc.will_page_break(3 * ROW_MM):
            doc.add_page()
        doc.set_font(_FONT, "B", 11)
        doc.cell(0, 7, latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        doc.current = _Table(title, list(columns))

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        table = self._doc.current
        assert table is not None, "start_table first"
        self._layout(table, rows)
        for row in rows:
            self._doc.draw_row(table, row)

    def write_totals(self, row: Sequence[Any]) -> None:
        table = self._doc.current
        assert table is not None, "start_table first"
        self._layout(table, [row])
        self._doc.draw_row(table, row, bold=True)

    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        self.start_table(title, [str(c) for c in rows[0]])
        self.write_rows(rows[1:])

    def finish(self) -> Path:
        self._close_table()
        self._doc.current = None
        self._doc.output(str(self.part))
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        self.part.unlink(missing_ok=True)
