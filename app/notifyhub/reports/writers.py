"""Report writers for CSV, XLSX and PDF, fed table by table and row batch by row batch.

CSV goes straight to the file; XLSX uses xlsxwriter's constant-memory mode, which flushes each
row to a temporary file as soon as the next one starts; PDF is laid out by :mod:`.pdf`. All
write to ``<name>.part`` and rename on success, so a failed run leaves no file that looks
finished. A writer receives, in order: ``start_table`` (a sheet, or a section of the PDF),
that table's row batches and its optional totals row, further tables, then summaries.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import xlsxwriter  # type: ignore[import-untyped]

Format = Literal["csv", "xlsx", "pdf"]


@dataclass(frozen=True, slots=True)
class Heading:
    """What a PDF page header says: whose report, what it is, which period."""

    business: str
    title: str
    period: str


class RowWriter(Protocol):
    def start_table(self, title: str, columns: Sequence[str]) -> None: ...
    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None: ...
    def write_totals(self, row: Sequence[Any]) -> None: ...
    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def finish(self) -> Path: ...
    def abort(self) -> None: ...


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class CsvWriter:
    """UTF-8 CSV with a header row: one table only, and no totals or summaries (they would
    break parsers that expect one table)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._file: IO[str] = self.part.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._started = False

    def start_table(self, title: str, columns: Sequence[str]) -> None:
        if self._started:
            raise ValueError("a CSV file holds one table; ask for XLSX or PDF")
        self._started = True
        self._csv.writerow(columns)

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        self._csv.writerows([cell_text(v) for v in row] for row in rows)

    def write_totals(self, row: Sequence[Any]) -> None:
        return None

    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None:
        return None

    def finish(self) -> Path:
        self._file.close()
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.part.unlink(missing_ok=True)


class XlsxWriter:
    """One sheet per table, streamed row by row, plus summary sheets written at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._book = xlsxwriter.Workbook(
            str(self.part), {"constant_memory": True, "remove_timezone": True}
        )
        self._money = self._book.add_format({"num_format": "#,##0.00"})
        self._when = self._book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self._day = self._book.add_format({"num_format": "yyyy-mm-dd"})
        self._bold = self._book.add_format({"bold": True})
        self._bold_money = self._book.add_format({"bold": True, "num_format": "#,##0.00"})
        self._sheet: Any = None
        self._row = 0
        self._closed = False

    def _write(self, sheet: Any, r: int, row: Sequence[Any], bold: bool = False) -> None:
        for c, value in enumerate(row):
            if value is None:
                continue
            if isinstance(value, Decimal):
                sheet.write_number(r, c, float(value), self._bold_money if bold else self._money)
            elif isinstance(value, bool):
                sheet.write_boolean(r, c, value)
            elif isinstance(value, int | float):
                sheet.write_number(r, c, value, self._bold if bold else None)
            elif isinstance(value, datetime):
                sheet.write_datetime(r, c, value, self._when)
            elif isinstance(value, date):
                sheet.write_datetime(r, c, datetime.combine(value, datetime.min.time()), self._day)
            else:
                sheet.write_string(r, c, str(value), self._bold if bold else None)

    def start_table(self, title: str, columns: Sequence[str]) -> None:
        self._sheet = self._book.add_worksheet(title[:31])
        self._sheet.write_row(0, 0, list(columns), self._bold)
        self._row = 1

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self._write(self._sheet, self._row, row)
            self._row += 1

    def write_totals(self, row: Sequence[Any]) -> None:
        self._write(self._sheet, self._row, row, bold=True)
        self._row += 1

    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None:
        sheet = self._book.add_worksheet(title[:31])
        for r, row in enumerate(rows):
            self._write(sheet, r, row, bold=r == 0)

    def finish(self) -> Path:
        self._closed = True
        self._book.close()
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if not self._closed:
                self._closed = True
                self._book.close()
        finally:
            self.part.unlink(missing_ok=True)


def open_writer(path: Path, fmt: Format, heading: Heading) -> RowWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "xlsx":
        return XlsxWriter(path)
    if fmt == "pdf":
        from .pdf import PdfWriter  # fpdf2 loads fonts and Pillow: only when a PDF is asked for

        return PdfWriter(path, heading)
    return CsvWriter(path)
