"""Row writers for CSV and XLSX that never hold a whole report in memory.

CSV goes straight to the file; XLSX uses xlsxwriter's constant-memory mode, which flushes each
row to a temporary file as soon as the next one starts. Both write to ``<name>.part`` and rename
on success, so a reader never sees half a report under the final name and a failed run leaves
no file that looks finished.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import xlsxwriter  # type: ignore[import-untyped]

Format = Literal["csv", "xlsx"]


class RowWriter(Protocol):
    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None: ...
    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def finish(self) -> Path: ...
    def abort(self) -> None: ...


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class CsvWriter:
    """UTF-8 CSV with a header row; summaries are not part of a CSV (they would break parsers
    that expect one table), so :meth:`add_summary` ignores them."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._file: IO[str] = self.part.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(columns)

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        self._csv.writerows([_cell_text(v) for v in row] for row in rows)

    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None:
        return None

    def finish(self) -> Path:
        self._file.close()
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)


class XlsxWriter:
    """One data sheet streamed row by row, plus optional summary sheets written at the end."""

    def __init__(self, path: Path, columns: Sequence[str], sheet: str = "Data") -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._book = xlsxwriter.Workbook(
            str(self.part), {"constant_memory": True, "remove_timezone": True}
        )
        self._money = self._book.add_format({"num_format": "#,##0.00"})
        self._when = self._book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self._day = self._book.add_format({"num_format": "yyyy-mm-dd"})
        bold = self._book.add_format({"bold": True})
        self._sheet = self._book.add_worksheet(sheet)
        self._sheet.write_row(0, 0, list(columns), bold)
        self._row = 1

    def _write(self, sheet: Any, r: int, row: Sequence[Any]) -> None:
        for c, value in enumerate(row):
            if value is None:
                continue
            if isinstance(value, Decimal):
                sheet.write_number(r, c, float(value), self._money)
            elif isinstance(value, bool):
                sheet.write_boolean(r, c, value)
            elif isinstance(value, int | float):
                sheet.write_number(r, c, value)
            elif isinstance(value, datetime):
                sheet.write_datetime(r, c, value, self._when)
            elif isinstance(value, date):
                sheet.write_datetime(r, c, datetime.combine(value, datetime.min.time()), self._day)
            else:
                sheet.write_string(r, c, str(value))

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self._write(self._sheet, self._row, row)
            self._row += 1

    def add_summary(self, title: str, rows: Sequence[Sequence[Any]]) -> None:
        sheet = self._book.add_worksheet(title)
        for r, row in enumerate(rows):
            self._write(sheet, r, row)

    def finish(self) -> Path:
        self._book.close()
        os.replace(self.part, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._book.close()
        finally:
            self.part.unlink(missing_ok=True)


def open_writer(path: Path, fmt: Format, columns: Sequence[str]) -> RowWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "xlsx":
        return XlsxWriter(path, columns)
    return CsvWriter(path, columns)
