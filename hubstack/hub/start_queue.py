"""The start queue: at most N notebook servers start at once, the rest wait their turn.

Starting a server is CPU-bound (the container's Python imports and JupyterLab's extension
loading), so N starts on a machine with fewer cores than N all get slower together: ten
analysts logging in at once would all wait for the tenth. With the queue they are served
in arrival order, each at full speed, so the k-th is ready after about k × start cost ÷
cores. A waiting spawn is told its place whenever it changes (the spawn page shows it).

JupyterHub's own concurrent_spawn_limit answers 429 past its limit; this queue makes a
burst wait instead (hub.spawn in the platform config sizes both).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Waiter:
    tell: Callable[[int], None]
    turn: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    place: int = 0


class StartQueue:
    """FIFO slots for server starts, shared by every spawn of one hub (one event loop)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a start queue needs at least one slot, got {slots}")
        self.slots = slots
        self._starting = 0
        self._waiting: list[_Waiter] = []

    @property
    def starting(self) -> int:
        """Starts holding a slot now."""
        return self._starting

    @property
    def waiting(self) -> int:
        """Spawns waiting for a slot now."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, tell: Callable[[int], None]) -> AsyncIterator[None]:
        """Hold one start slot for the body; while none is free, wait in arrival order and
        call TELL(place) each time this spawn's place (1: next) changes."""
        if self._starting < self.slots and not self._waiting:
            self._starting += 1
        else:
            waiter = _Waiter(tell)
            self._waiting.append(waiter)
            self._tell_places()
            try:
                await waiter.turn
            except asyncio.CancelledError:
                # A spawn cancelled (stopped, timed out) while queued gives up its place, or,
                # if its turn came in the same instant, the slot it was handed.
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                    self._tell_places()
                elif waiter.turn.done() and not waiter.turn.cancelled():
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if self._waiting:
            # The slot passes straight to the first in line: no newcomer can take it first.
            self._waiting.pop(0).turn.set_result(None)
            self._tell_places()
        else:
            self._starting -= 1

    def _tell_places(self) -> None:
        for place, waiter in enumerate(self._waiting, 1):
            if waiter.place != place:
                waiter.place = place
                waiter.tell(place)
