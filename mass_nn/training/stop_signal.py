"""Graceful stop: SIGTERM / SIGINT ask the trainer to finish the current step and save `latest`.

A second signal restores the default behaviour, so pressing Ctrl-C twice still kills a stuck run.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

logger = logging.getLogger(__name__)


class StopRequest:
    """Installs handlers for SIGTERM and SIGINT while active; `requested` turns true on the first signal."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked data-loading worker: its parent stops it when it is done
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s received: finishing the current step and saving checkpoint_latest.pt "
                       "(send it again to stop immediately)", self.signal_name)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
