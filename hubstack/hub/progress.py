"""Spawn progress: events for JupyterHub's progress page, and a pull-progress tracker.

JupyterHub polls Spawner.progress() while a spawn is pending and shows each event's
`progress` (0-100) and `message`; stock DockerSpawner yields nothing, so its page sits
at 0% through a long pull.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SpawnProgress:
    """An append-only list of events that any number of readers can follow."""

    def __init__(self, on_emit: Callable[[str], None] | None = None) -> None:
        self._events: list[dict] = []
        self._changed = asyncio.Event()
        self._on_emit = on_emit

    def emit(self, percent: int, message: str) -> None:
        # Never go backwards: the page's bar must only grow.
        last = self._events[-1]["progress"] if self._events else 0
        self._events.append({"progress": max(last, min(int(percent), 100)), "message": message})
        self._changed.set()
        # The hub's log keeps each message too: a start done within the hub's first second
        # answers its progress page with "ready" only (JupyterHub replays nothing then).
        if self._on_emit:
            self._on_emit(message)

    async def events(self):
        """Every event so far, then each new one as it comes (the hub stops reading when the spawn
        ends).
        """
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            self._changed.clear()
            await self._changed.wait()


class PullProgress:
    """Share of an image pull done, from the engine's per-layer JSON progress messages."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int]] = {}  # id -> (done bytes, total bytes)
        self.finished: set[str] = set()
        self._last = -1

    def update(self, event: dict) -> bool:
        """Record one message; True when the shown share changed by a whole percent."""
        layer, status = event.get("id"), event.get("status", "")
        if not layer or ":" in layer:  # "id" is the tag/digest in the summary lines
            return False
        detail = event.get("progressDetail") or {}
        if status.startswith("Downloading") and detail.get("total"):
            self.layers[layer] = (detail.get("current", 0), detail["total"])
        elif status in ("Pull complete", "Already exists", "Download complete"):
            done = self.layers.get(layer, (1, 1))[1]
            self.layers[layer] = (done, done)
            if status != "Download complete":
                self.finished.add(layer)
        elif status == "Pulling fs layer" or status == "Waiting":
            self.layers.setdefault(layer, (0, 0))
        percent = int(self.fraction * 100)
        if percent != self._last:
            self._last = percent
            return True
        return False

    @property
    def fraction(self) -> float:
        if not self.layers:
            return 0.0
        total = sum(t for _, t in self.layers.values())
        if total == 0:
            return len(self.finished) / len(self.layers)
        # Layers whose size is not yet known count as not started.
        return sum(c for c, _ in self.layers.values()) / total

    def describe(self) -> str:
        return f"{int(self.fraction * 100)}% ({len(self.finished)}/{len(self.layers)} layers)"
