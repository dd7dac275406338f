"""An experiment, not a fix: the server with its long-lived objects moved out of the GC's reach.

    python -m bench.fanout --server-module bench.gctuned

Runs ``python -m server`` unchanged, plus one daemon thread that calls :func:`gc.freeze` every
``BENCH_GC_FREEZE_EVERY`` seconds (default 5): everything alive then moves to the permanent
generation, which no collection scans. The objects of 10,000 idle connections stop making each
full (generation 2) collection walk millions of objects. Frozen objects are still freed by
reference counting; only reference cycles among them would wait for an ``unfreeze``. It shows
what a freeze in the server (for instance after start-up and after a burst of connections)
would buy; the bench passes no judgement on the leak trade-off.
"""

from __future__ import annotations

import gc
import os
import threading
import time


def _freezer(every: float) -> None:
    while True:
        time.sleep(every)
        gc.freeze()


def main() -> None:
    """Start the freezer thread, then run the real server in this thread."""
    every = float(os.environ.get("BENCH_GC_FREEZE_EVERY", "5"))
    threading.Thread(target=_freezer, args=(every,), name="gc-freezer", daemon=True).start()
    from server.__main__ import run

    run()


if __name__ == "__main__":
    main()
