"""Ctrl-C during training: finish the step in progress, then stop; a second Ctrl-C stops at once.

An engine interrupted halfway through its Adam update holds weights and moments from two different
steps; a checkpoint of that would resume wrongly. So the first SIGINT is only noted, and the training
loop checks ``requested`` between steps (then saves and exits 130); a second one raises
KeyboardInterrupt as usual, for a user who cannot wait for the step. Every trainer of the lab (the shared
trainer, the diffusion command) stops this way.
"""

from __future__ import annotations

import signal
import threading


class StepInterrupt:
    """Installs the handler when made and puts the previous one back on ``restore()``. Off the main thread,
    where Python cannot catch signals, it does nothing and ``requested`` stays False."""

    def __init__(self):
        self.requested = False
        self._main = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGINT, self._handler) if self._main else None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._main:
            signal.signal(signal.SIGINT, self._previous)
