"""Metrics hooks: counters and gauges under the Rust client's names, kept in memory
(``Client.metrics.snapshot()``) and handed to an optional hook, e.g. to feed
prometheus_client or StatsD: ``Client(..., metrics_hook=lambda name, value, labels: ...)``.

- ``imprint_client_version{topic}`` gauge: version held
- ``imprint_client_last_poll_success_seconds`` gauge: unix time of the last successful poll
- ``imprint_client_apply_failures_total{topic}`` counter
- ``imprint_client_poll_errors_total{kind}`` counter: network, server, client, download
- ``imprint_client_updates_applied_total{topic}`` counter
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Optional, Tuple

Hook = Callable[[str, float, Dict[str, str]], None]
Key = Tuple[str, Tuple[Tuple[str, str], ...]]
log = logging.getLogger("imprint")


class Metrics:
    def __init__(self, hook: Optional[Hook] = None):
        self._hook = hook
        self._lock = threading.Lock()
        self._values: Dict[Key, float] = {}

    def _emit(self, name: str, value: float, labels: Dict[str, str]) -> None:
        if self._hook is not None:
            try:
                self._hook(name, value, labels)
            except Exception:
                log.exception("imprint: the metrics hook raised")

    def gauge(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)
        self._emit(name, float(value), labels)

    def count(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            v = self._values[key] = self._values.get(key, 0.0) + 1
        self._emit(name, v, labels)

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def snapshot(self) -> Dict[Key, float]:
        with self._lock:
            return dict(self._values)
