"""engine/throttle.py: at most once per interval."""

from __future__ import annotations

from engine.throttle import Throttle


def test_once_per_interval_unless_forced_reset_or_restarted() -> None:
    throttle = Throttle(60.0)  # long: nothing here waits for it to pass
    assert throttle.ready() and not throttle.ready()
    assert throttle.ready(force=True) and not throttle.ready()
    throttle.reset()
    assert throttle.ready()
    throttle.restart()
    assert not throttle.ready()
    assert Throttle(0.0).ready() and Throttle(0.0).ready()
