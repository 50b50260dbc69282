"""Run a short job off the GUI thread and get its result back on it (like Anki's QueryOp)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

log = logging.getLogger(__name__)


class _Relay(QObject):
    """Lives on the GUI thread; its own slots receive the job's signals, queued."""

    succeeded = Signal(object)
    failed = Signal(object)

    def __init__(
        self,
        parent: QObject,
        on_success: Callable[[Any], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        super().__init__(parent)
        self._on_success = on_success
        self._on_failure = on_failure
        self.succeeded.connect(self._on_job_succeeded)
        self.failed.connect(self._on_job_failed)

    @Slot(object)
    def _on_job_succeeded(self, result: Any) -> None:
        self._on_success(result)
        self.deleteLater()

    @Slot(object)
    def _on_job_failed(self, error: BaseException) -> None:
        self._on_failure(error)
        self.deleteLater()


class _Job(QRunnable):
    def __init__(self, work: Callable[[], Any], relay: _Relay) -> None:
        super().__init__()
        self._work = work
        self._relay = relay

    def run(self) -> None:
        try:
            result = self._work()
        except Exception as exc:
            log.warning("background job failed", exc_info=True)
            self._emit(self._relay.failed, exc)
            return
        self._emit(self._relay.succeeded, result)

    @staticmethod
    def _emit(signal: Any, value: Any) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the window that asked was closed meanwhile
            log.debug("background job finished after its receiver was deleted")


def run_in_background(
    work: Callable[[], Any],
    on_success: Callable[[Any], None],
    parent: QObject,
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``work`` on the global thread pool; call back on ``parent``'s (GUI) thread. A
    failure goes to ``on_failure``, or to the user (app.errors.show_exception)."""
    if on_failure is None:
        from app.errors import show_exception

        on_failure = show_exception
    relay = _Relay(parent, on_success, on_failure)
    QThreadPool.globalInstance().start(_Job(work, relay))
