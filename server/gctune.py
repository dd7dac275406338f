"""Keep garbage-collector pauses short while thousands of long-lived connections are open.

CPython's full collection walks every tracked object: at 10,000 connections that is about
1.8 million, a 0.9–1.2 s stop of the event loop (docs/benchmarks.md). Objects that live as long
as a connection gain nothing from being scanned again and again, so after a burst of new
connections they are moved out of the collector's sight with ``gc.freeze()``. Reference counting
still frees them when their connection ends; only garbage *cycles* among frozen objects would
wait, so every ``thaw_interval`` the frozen set is handed back to the collector, and when the
policy stops (the app shuts down) whatever it froze is handed back too: nothing it froze outlives
it unseen by the collector.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class GcPolicy:
    """Freezes after every ``freeze_after`` new connections; thaws every ``thaw_interval`` s."""

    def __init__(
        self,
        *,
        opened_total: Callable[[], int],
        freeze_after: int = 256,
        thaw_interval: float = 3600.0,
        check_every: float = 5.0,
    ) -> None:
        self._opened_total = opened_total
        self._freeze_after = freeze_after
        self._thaw_interval = thaw_interval
        self._check_every = check_every
        self._frozen_at_opened = 0
        self._last_thaw = time.monotonic()
        #: Whether objects this policy froze are still frozen (no thaw since its last freeze).
        self._holding = False

    def step(self) -> str | None:
        """One decision: "freeze", "thaw", or None; applied to the collector."""
        now = time.monotonic()
        if self._thaw_interval > 0 and now - self._last_thaw >= self._thaw_interval:
            self._last_thaw = now
            self._thaw()
            return "thaw"
        opened = self._opened_total()
        if opened - self._frozen_at_opened >= self._freeze_after:
            self._frozen_at_opened = opened
            self._freeze()
            return "freeze"
        return None

    async def run(self) -> None:
        """Apply the policy until cancelled; then hand back what it froze."""
        try:
            self._freeze()  # what start-up built (modules, the app) lives as long as the app
            while True:
                await asyncio.sleep(self._check_every)
                decision = self.step()
                if decision:
                    logger.debug("gc %s: %d objects frozen", decision, gc.get_freeze_count())
        finally:
            if self._holding:
                self._thaw()

    def _freeze(self) -> None:
        gc.freeze()
        self._holding = True

    def _thaw(self) -> None:
        gc.unfreeze()
        self._holding = False
