"""A one-line progress bar on stderr (a plain line per step when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:02d}:{s:02d}"


class Progress:
    WIDTH = 28

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def _bar(self) -> str:
        filled = round(self.WIDTH * self.done / self.total)
        return "█" * filled + "░" * (self.WIDTH - filled)

    def start(self, label: str) -> None:
        elapsed = time.monotonic() - self.started
        line = f"[{self._bar()}] {self.done}/{self.total} {_clock(elapsed)}  {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:160])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self, note: str = "") -> None:
        self.done += 1
        if note:
            if self.tty:
                sys.stderr.write("\r\033[K")
            sys.stderr.write(f"  {note}\n")
            sys.stderr.flush()

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(f"[{self._bar()}] {self.done}/{self.total} done in {_clock(elapsed)}\n")
        sys.stderr.flush()
