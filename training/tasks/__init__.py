"""The built-in tasks, by name (`python -m training tasks` lists them)."""

from __future__ import annotations

from training.errors import UserError

from .adding import Adding
from .base import Check, Reproduction, Setup, Split, Task, TaskData, TrainDefaults
from .csv_series import CsvSeries
from .embedded_reber import EmbeddedReber
from .mackey_glass import MackeyGlass
from .msd import MeasuringSpikeDelays
from .trace_conditioning import TraceConditioning

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        MackeyGlass(),
        TraceConditioning(),
        EmbeddedReber(),
        Adding(),
        MeasuringSpikeDelays(),
        CsvSeries(),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None


__all__ = [
    "TASKS",
    "Check",
    "Reproduction",
    "Setup",
    "Split",
    "Task",
    "TaskData",
    "TrainDefaults",
    "get_task",
]
