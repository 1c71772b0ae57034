"""What `cpx execute` shows while it runs: rich bars on a terminal, one line a stage elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any

from cpx.plan import Plan, Stage


class Display:
    """The quiet display (`--quiet`): shows nothing; the base of the others."""

    def run_started(self, plan: Plan, todo: int, cached: int, rerun: dict[str, str]) -> None: ...
    def workers(self, labels: list[str]) -> None: ...
    def fleet_started(self, slot: int, fleet_id: str, members: list[str]) -> None: ...
    def stage_started(self, slot: int, stage: Stage) -> None: ...
    def stage_progress(self, slot: int, stage_id: str, done: int, total: int, info: dict[str, Any]) -> None: ...
    def stage_finished(
        self, slot: int, stage: Stage, ok: bool, seconds: float, *, error: str = "", log: str = ""
    ) -> None: ...
    def stage_requeued(self, slot: int, stage: Stage) -> None:
        """The stage stopped on `slot` and waits to run again (out of memory, a lost worker, --retry)."""

    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


class LineDisplay(Display):
    """One line per event, for logs and pipes."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.labels: list[str] = []
        self.n_done = 0
        self.todo = 0

    def _print(self, msg: str) -> None:
        print(msg, file=self.stream, flush=True)

    def run_started(self, plan: Plan, todo: int, cached: int, rerun: dict[str, str]) -> None:
        self.todo = todo
        self._print(f"cpx: {plan.name}: {len(plan.stages)} stages, {cached} done, {todo} to run")
        for sid, why in rerun.items():
            self._print(f"  re-running {sid}: {why}")

    def workers(self, labels: list[str]) -> None:
        self.labels = labels
        self._print(f"  workers: {', '.join(labels)}")

    def fleet_started(self, slot: int, fleet_id: str, members: list[str]) -> None:
        where = self.labels[slot] if slot < len(self.labels) else str(slot)
        self._print(f"  {where}: a fleet of {len(members)} trains together ({fleet_id}): {', '.join(members)}")

    def stage_finished(
        self, slot: int, stage: Stage, ok: bool, seconds: float, *, error: str = "", log: str = ""
    ) -> None:
        self.n_done += 1
        where = self.labels[slot] if slot < len(self.labels) else str(slot)
        if ok:
            self._print(f"  [{self.n_done}/{self.todo}] {stage.id} done in {seconds:.2f} s on {where}")
        else:
            self._print(f"  [{self.n_done}/{self.todo}] {stage.id} FAILED: {error} (log: {log})")

    def note(self, message: str) -> None:
        self._print(f"  {message}")


class RichDisplay(Display):
    """A bar for the run and one per stage in flight (items, tokens/s, ETA): one per worker, or
    one per member of the fleet a worker runs; an idle worker shows one "idle" line."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        def fixed() -> Column:
            return Column(no_wrap=True, overflow="ignore")

        self.console = console or Console(stderr=True)
        # The numbers keep their width whatever the terminal's: only the stage name (and, below
        # ~60 columns, the bar) gives way, the name cut with an ellipsis.
        narrow = self.console.width < 100
        self.progress = Progress(
            TextColumn(
                "{task.description}",
                markup=False,
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1, min_width=8),
            ),
            BarColumn(bar_width=10 if narrow else 30, table_column=Column(no_wrap=True)),
            MofNCompleteColumn(table_column=fixed()),
            TextColumn("{task.fields[rate]}", markup=False, table_column=fixed()),
            TimeElapsedColumn(table_column=fixed()),
            TimeRemainingColumn(table_column=fixed()),
            console=self.console,
            transient=False,
            expand=True,
        )
        self.run_task: Any = None
        self.idle: dict[int, Any] = {}  # slot -> its "idle" line, while it runs nothing
        self.bars: dict[tuple[int, str], Any] = {}  # (slot, stage id) -> its bar
        self.started: dict[tuple[int, str], float] = {}
        self.labels: list[str] = []

    def run_started(self, plan: Plan, todo: int, cached: int, rerun: dict[str, str]) -> None:
        self.progress.start()
        for sid, why in rerun.items():
            self.progress.console.print(f"re-running {sid}: {why}", markup=False)
        self.run_task = self.progress.add_task(f"{plan.name} ({cached} cached)", total=todo, rate="")

    def _label(self, slot: int) -> str:
        return self.labels[slot] if slot < len(self.labels) else str(slot)

    def workers(self, labels: list[str]) -> None:
        self.labels = labels
        for i in range(len(labels)):
            self.idle[i] = self.progress.add_task(f"  {self._label(i)}: idle", total=None, rate="")

    def fleet_started(self, slot: int, fleet_id: str, members: list[str]) -> None:
        self.progress.console.print(
            f"{self._label(slot)}: a fleet of {len(members)} trains together: {', '.join(members)}", markup=False
        )

    def stage_started(self, slot: int, stage: Stage) -> None:
        if slot in self.idle:
            self.progress.remove_task(self.idle.pop(slot))
        key = (slot, stage.id)
        self.started[key] = time.monotonic()
        self.bars[key] = self.progress.add_task(f"  {self._label(slot)}: {stage.id}", total=None, rate="")

    def stage_progress(self, slot: int, stage_id: str, done: int, total: int, info: dict[str, Any]) -> None:
        key = (slot, stage_id)
        if key not in self.bars:
            return
        rate = ""
        tokens = info.get("tokens")
        if isinstance(tokens, (int, float)):
            elapsed = max(1e-9, time.monotonic() - self.started.get(key, time.monotonic()))
            rate = f"{tokens / elapsed:,.0f} tok/s"
        self.progress.update(self.bars[key], completed=done, total=total or None, rate=rate)

    def stage_finished(
        self, slot: int, stage: Stage, ok: bool, seconds: float, *, error: str = "", log: str = ""
    ) -> None:
        self.progress.advance(self.run_task)
        if not ok:
            self.progress.console.print(f"FAILED {stage.id}: {error} (log: {log})", markup=False)
        self._drop(slot, stage.id)

    def stage_requeued(self, slot: int, stage: Stage) -> None:
        self._drop(slot, stage.id)

    def _drop(self, slot: int, stage_id: str) -> None:
        """Remove a stage's bar; a worker left with none shows "idle"."""
        bar = self.bars.pop((slot, stage_id), None)
        if bar is not None:
            self.progress.remove_task(bar)
        if not any(s == slot for s, _ in self.bars) and slot not in self.idle:
            self.idle[slot] = self.progress.add_task(f"  {self._label(slot)}: idle", total=None, rate="")

    def note(self, message: str) -> None:
        self.progress.console.print(message, markup=False)

    def close(self) -> None:
        self.progress.stop()


def make_display(*, quiet: bool = False) -> Display:
    if quiet:
        return Display()
    if sys.stderr.isatty():
        try:
            return RichDisplay()
        except ImportError:  # a bare GPU image without rich: plain lines still work
            pass
    return LineDisplay()
