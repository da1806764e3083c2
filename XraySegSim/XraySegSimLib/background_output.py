"""What a background child writes, as ``background.BackgroundProcess`` reads it: progress lines (tqdm bars, and
for commands that print them, lines that start with a percentage), the tail of its other lines, and the one-line
message of a failed run. Qt-free and MRML-free.

* A tqdm bar update: ``desc:  40%|####      | 4/10 [00:01<00:02,  3.2it/s]`` (the description is optional);
  :func:`progress_line` writes one for our own workers (``export_process``, ``segment_process``).
* A percentage line: ``  45% affine`` (``xrayseg label-transfer``), read only when the run asks for it.
"""

from __future__ import annotations

import codecs
import re
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import IO

# One tqdm bar update: "desc:  40%|####      | 4/10 [00:01<00:02,  3.2it/s]" (the description is optional).
TQDM_BAR = re.compile(r"(?:(?P<label>[^\r\n|]*?):\s*)?(?P<percent>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\b")
# "  45% affine" (label-transfer) or a tqdm bar "desc:  40%|####  | 4/10 [00:01<00:02]"
PERCENT_LINE = re.compile(r"^\s*(?:(?P<desc>[^%|:\r\n]{1,60}):\s*)?(?P<percent>\d{1,3}(?:\.\d+)?)%"
                          r"\s*(?:\|[^|]*\|\s*\d+/\d+)?\s*(?P<label>[^\[\r\n]*)")
OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemoryError|MemoryError|std::bad_alloc", re.IGNORECASE)


@dataclass(frozen=True)
class Progress:
    """The child's latest progress: ``fraction`` in [0, 1] (None: no bar yet, busy), ``done``/``total`` items."""

    fraction: float | None = None
    done: int | None = None
    total: int | None = None
    label: str = ""


def parse_progress(text: str) -> Progress | None:
    """The last tqdm bar update in ``text``, or None when it holds none."""
    matches = list(TQDM_BAR.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    done, total = int(last.group("n")), int(last.group("total"))
    fraction = min(1.0, done / total) if total > 0 else int(last.group("percent")) / 100.0
    return Progress(fraction, done, total, (last.group("label") or "").strip())


def parse_fraction(line: str) -> tuple[float, str] | None:
    """(fraction, label) of one progress line (tqdm bar or ``NN% label``), or None."""
    match = PERCENT_LINE.match(line)
    if not match:
        return None
    label = match.group("label").strip() or (match.group("desc") or "").strip()
    return min(1.0, float(match.group("percent")) / 100.0), label


def progress_line(label: str, done: int, total: int, note: str = "") -> None:
    """One tqdm-style bar update on stderr (``label: PP%|###| done/total [note]``), the form
    :func:`parse_progress` reads: how our worker processes report progress."""
    percent = int(100 * done / total) if total > 0 else 0
    tail = f" [{note}]" if note else ""
    print(f"\r{label}: {percent:3d}%|{'#' * (percent // 10):10s}| {done}/{total}{tail}", file=sys.stderr, flush=True)


def describe_failure(returncode: int, last_line: str, name: str = "the run", out_of_memory: bool = False,
                     where: str = "") -> str:
    """One line for a child that ended with ``returncode`` != 0 (negative: killed by that signal, POSIX);
    ``where`` is how far it got (e.g. "export 12/200")."""
    if returncode < 0 or returncode == 128 + 9:  # 137: SIGKILL as a shell reports it
        number = -returncode if returncode < 0 else 9
        try:
            signame = signal.Signals(number).name
        except ValueError:
            signame = f"signal {number}"
        if number == 9:
            text = f"{name} was killed ({signame}), e.g. by the system when memory ran out"
        else:
            text = f"{name} was stopped by {signame}"
    elif out_of_memory:
        text = f"{name} ran out of memory (exit status {returncode}); try a smaller size or batch, or the CPU"
    else:
        text = f"{name} failed (exit status {returncode})"
    if where:
        text = f"{text}, at {where}"
    return f"{text}: {last_line}" if last_line else text


class StreamReader(threading.Thread):
    """Reads one pipe to its end: complete lines into ``lines`` (a bounded tail), tqdm bars (and, with
    ``percent_lines``, lines that start with a percentage) into ``progress``."""

    def __init__(self, stream: IO[bytes], tail_lines: int, percent_lines: bool = False) -> None:
        super().__init__(daemon=True, name="xrayseg-background-reader")
        self.stream, self.lock, self.percent_lines = stream, threading.Lock(), percent_lines
        self.lines: deque[str] = deque(maxlen=tail_lines)
        self.progress: Progress | None = None

    def _percent_progress(self, lines: list[str]) -> tuple[Progress | None, list[str]]:
        """(the last percentage line as progress, the other lines)."""
        found, others = None, []
        for line in lines:
            parsed = parse_fraction(line) if line.strip() else None
            if parsed is None:
                others.append(line)
            else:
                found = Progress(parsed[0], None, None, parsed[1])
        return found, others

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        read = getattr(self.stream, "read1", self.stream.read)
        while True:
            chunk = read(65536)
            if not chunk:
                break
            pending += decoder.decode(chunk)
            *complete, pending = re.split(r"[\r\n]", pending)
            pending = pending[-65536:]  # a child that never ends its line must not fill our memory
            progress = parse_progress("\n".join(complete + [pending]))  # a bar ends with the next "\r"
            if self.percent_lines:  # its percentage lines are progress, not messages
                percent, complete = self._percent_progress(complete)
                progress = progress or percent
            with self.lock:
                if progress is not None:
                    self.progress = progress
                self.lines.extend(p for p in complete if p.strip() and not TQDM_BAR.search(p))
        pending += decoder.decode(b"", final=True)
        if self.percent_lines and pending.strip():
            progress, rest = self._percent_progress([pending])
            pending = "".join(rest)
            if progress is not None:
                with self.lock:
                    self.progress = progress
        with self.lock:
            if pending.strip() and not TQDM_BAR.search(pending):
                self.lines.append(pending)
        self.stream.close()

    def snapshot(self) -> tuple[Progress | None, tuple[str, ...]]:
        with self.lock:
            return self.progress, tuple(self.lines)


__all__ = ["OUT_OF_MEMORY", "PERCENT_LINE", "TQDM_BAR", "Progress", "StreamReader", "describe_failure",
           "parse_fraction", "parse_progress", "progress_line"]
