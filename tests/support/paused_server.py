"""Test-only: ``python -m tests.support.paused_server`` is ``python -m server`` whose writer dies
between commit and publish.

Every publish pauses at the write path's ``before_publish`` point (server/hooks.py): it writes
the committed event ids to the file named by ``PAUSE_MARKER`` and waits forever, so a test can
wait for the marker and SIGKILL the process with the commit done and the publish not.
Configured like the real server (``Settings.from_environ``); never used outside the tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from orders.hooks import Hooks
from server.__main__ import build_config
from server.app import create_app
from server.logs import configure
from server.settings import Settings


class PauseBeforePublish(Hooks):
    """Say which events are committed, then never publish them."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    async def before_publish(self, event_ids: Sequence[int]) -> None:
        # Written aside and renamed into place: the test polls for the marker, and a file it can
        # see before its text is written would read as "no event ids".
        partial = self.marker.with_name(self.marker.name + ".partial")
        partial.write_text(" ".join(str(i) for i in event_ids))
        os.replace(partial, self.marker)
        await asyncio.Event().wait()  # until the test kills the process


def main() -> None:
    """Serve like ``python -m server``, with the pause installed."""
    settings = Settings.from_environ(os.environ)
    configure(settings.log_level, settings.log_format)
    config = build_config(settings)
    config.app = create_app(settings, hooks=PauseBeforePublish(Path(os.environ["PAUSE_MARKER"])))
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
