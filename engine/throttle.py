"""At most once per interval: progress events, streamed pieces, heat maps, reply saves."""

from __future__ import annotations

import math
import time


class Throttle:
    """Says yes at most once per ``interval`` seconds (and whenever forced).

    The first call says yes; ``reset`` makes the next one say yes again, ``restart`` makes
    the next yes wait a whole interval from now.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def reset(self) -> None:
        self._last = -math.inf

    def restart(self) -> None:
        self._last = time.monotonic()
