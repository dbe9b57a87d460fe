"""`kb add`'s embedding progress: a live bar with chunks/s and ETA in a terminal, a line every
few seconds in a log (a bar's redraws would flood it), nothing for an ingest too small to wait for."""

from __future__ import annotations

import time

from rich.console import Console

QUIET_BELOW = 256  # chunks: fewer embed in seconds
LINE_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal


class EmbedProgress:
    def __init__(self, total: int, done: int = 0, live: bool | None = None):
        self.console = Console(stderr=True, soft_wrap=True)
        self.total, self.done, self.resumed = total, done, done
        self.live = self.console.is_terminal if live is None else live
        self.quiet = total - done < QUIET_BELOW
        self.bar = None
        self.started = self.said = time.perf_counter()

    def __enter__(self) -> EmbedProgress:
        if self.resumed:
            self.console.print(f"resuming: {self.resumed:,} of {self.total:,} chunks were embedded by an add that did not finish")
        if self.live and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task("embed", total=self.total, completed=self.done, rate="")
            self.bar.start()
        return self

    def advance(self, count: int) -> None:
        self.done += count
        rate = (self.done - self.resumed) / max(time.perf_counter() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{rate:,.1f} chunks/s")
        elif not self.quiet and time.perf_counter() - self.said >= LINE_EVERY:
            self.said = time.perf_counter()
            eta = (self.total - self.done) / rate if rate else 0
            self.console.print(f"embedded {self.done:,}/{self.total:,} chunks, {rate:,.1f} chunks/s, {eta:,.0f} s to go", highlight=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
