"""Tasks waiting on one connection, each for its own condition.

The stack wakes a connection's waiters after every change of its engine (a segment in, a timer,
an application call). A ``trio.lowlevel.ParkingLot`` would wake all of them every time; here a
waiter may give the condition it waits for, and is woken only once that holds. A sender blocked
on a full send buffer then wakes when a useful amount of space is free, not on every ACK that
frees one segment's worth, and a task reading a stream's events does not wake for every data
segment: each wake-up is a trio scheduling round (~20-40 us here), more than the engine's own
work for a segment. A waiter without a condition wakes on every change, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["Ready", "Waiters"]

#: A waiter's condition: cheap, side-effect free, evaluated after each change of the engine.
Ready = Callable[[], bool]


class Waiters:
    """The tasks waiting on one connection (see the module docstring)."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[tuple[trio.lowlevel.Task, Ready | None]] = []

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, ready: Ready | None = None) -> None:
        """Park until :meth:`wake` finds ``ready()`` true (any change if ``ready`` is None)."""
        entry = (trio.lowlevel.current_task(), ready)
        self._waiting.append(entry)

        def abort(_: object) -> trio.lowlevel.Abort:
            try:
                self._waiting.remove(entry)
            except ValueError:  # pragma: no cover - rescheduled tasks are never aborted
                pass
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self, *, everyone: bool = False) -> None:
        """Wake the waiters whose condition holds, or all of them (``everyone``: the
        connection is ending, closed or in error, and every waiter must look)."""
        waiting = self._waiting
        if not waiting:
            return
        keep = []
        reschedule = trio.lowlevel.reschedule
        for entry in waiting:
            ready = entry[1]
            if everyone or ready is None or ready():
                reschedule(entry[0])
            else:
                keep.append(entry)
        self._waiting = keep
