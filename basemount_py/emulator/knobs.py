"""Emulator knobs (latency, bandwidth, fault injection) and counters.

``Knobs`` is a plain dataclass: the CLI builds one, ``POST /_emulator/knobs`` merges a JSON object
into it (``Knobs.merge`` validates every value, so a typo is a clear 400, never a traceback), and
``EmulatorProcess.set_knobs`` drives that endpoint.

Fault decisions live in ``FaultInjector`` so they are deterministic:

* ``fail_next`` entries are consumed first, in order, by the requests whose scope matches
  (``api`` = every API route, ``content`` = the signed S3-like content URLs, ``all`` = both).
* Otherwise one draw of a ``random.Random(fault_seed)`` is compared with the cumulative rates
  ``error_rate``, ``throttle_rate``, ``reset_rate``, ``truncate_rate``, ``stall_rate`` (the last
  three only for content responses; API requests only know stall = a delayed answer).
  Only requests inside ``fault_scope`` draw, so the sequence of faults seen by, say, content
  requests does not depend on how many API calls were interleaved when the scope is ``content``.

``rate_limit`` (requests/s per access token, API routes only; 0 = none) is a token bucket per
token, like a real service's quota: ``RateLimiter.check`` answers how long until the next request
would be allowed, which becomes a 429 with that ``Retry-After`` (whole seconds, as HTTP says). Its
answers are counted as the fault kind ``rate-limit``, apart from the injected ``429``s.

Counters are bounded: keys are route templates and fault kinds, never raw paths.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Knobs", "KnobError", "FaultInjector", "RateLimiter", "Counters", "FAULT_KINDS", "SCOPES"]

FAULT_KINDS = ("500", "503", "429", "reset", "truncate", "stall")
SCOPES = ("api", "content", "all")
MAX_FAIL_NEXT = 1000  # bounded memory for the one-shot queue
MAX_RATE_LIMITED_TOKENS = 1024  # buckets kept (least recently used dropped)


class KnobError(ValueError):
    """A knob value that does not make sense (message is shown to the user as-is)."""


@dataclass
class Knobs:
    latency_ms: float = 0.0
    conn_bandwidth: float = 0.0  # MB/s (10**6 bytes) per response body; 0 = unlimited
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    fault_scope: str = "all"
    fault_seed: int = 0
    url_lifetime: float = 7 * 24 * 3600.0
    short_pages: bool = False
    # Hostile listings: page k (k = Offset // Limit) reports TotalCount = real + skew * (k + 1),
    # so the count changes between pages (and a huge skew makes page 0 lie about the size).
    total_count_skew: int = 0
    rate_limit: float = 0.0  # API requests/s per access token (bucket of one second); 0 = no limit
    fail_next: list[dict[str, Any]] = field(default_factory=list)

    _RATES = ("error_rate", "throttle_rate", "reset_rate", "truncate_rate", "stall_rate")
    _NON_NEGATIVE = ("latency_ms", "conn_bandwidth", "retry_after", "stall_seconds", "rate_limit")

    def __post_init__(self) -> None:
        # bumped whenever fault_seed is set (even to the same value): the injector re-seeds,
        # so "set seed, run, set seed again, run" replays the same faults
        self.seed_generation = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, changes: Any) -> None:
        """Validate ``changes`` (a JSON object) completely, then apply it."""
        if not isinstance(changes, dict):
            raise KnobError("knobs must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise KnobError(f"unknown knob {name!r} (known: {', '.join(sorted(known))})")
            values[name] = self._check(name, value)
        total = sum(values.get(r, getattr(self, r)) for r in self._RATES)
        if total > 1.0 + 1e-9:
            raise KnobError(f"the fault rates add up to {total:g}; their sum must be <= 1")
        for name, value in values.items():
            setattr(self, name, value)
        if "fault_seed" in values:
            self.seed_generation += 1

    def _check(self, name: str, value: Any) -> Any:
        if name == "fail_next":
            return _check_fail_next(value)
        if name == "fault_scope":
            if value not in SCOPES:
                raise KnobError(f"fault_scope must be one of {', '.join(SCOPES)}")
            return value
        if name == "short_pages":
            if not isinstance(value, bool):
                raise KnobError("short_pages must be true or false")
            return value
        if name in ("fault_seed", "total_count_skew"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise KnobError(f"{name} must be an integer")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KnobError(f"{name} must be a number")
        value = float(value)
        if value != value or value < 0:  # NaN or negative
            raise KnobError(f"{name} must be >= 0")
        if name in self._RATES and value > 1:
            raise KnobError(f"{name} is a fraction of requests: it must be between 0 and 1")
        if name == "url_lifetime" and value <= 0:
            raise KnobError("url_lifetime must be > 0 seconds")
        return value


def _check_fail_next(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise KnobError('fail_next must be a list of {"kind", "count", "scope"} objects')
    if len(value) > MAX_FAIL_NEXT:
        raise KnobError(f"fail_next holds at most {MAX_FAIL_NEXT} entries")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) - {"kind", "count", "scope"}:
            raise KnobError('each fail_next entry is an object with keys "kind", "count", "scope"')
        kind = str(entry.get("kind", ""))
        if kind not in FAULT_KINDS:
            raise KnobError(f"fail_next kind must be one of {', '.join(FAULT_KINDS)}")
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise KnobError("fail_next count must be an integer >= 1")
        scope = entry.get("scope", "all")
        if scope not in SCOPES:
            raise KnobError(f"fail_next scope must be one of {', '.join(SCOPES)}")
        out.append({"kind": kind, "count": count, "scope": scope})
    return out


class FaultInjector:
    """Decides, per request, which fault (if any) to inject."""

    def __init__(self, knobs: Knobs):
        self.knobs = knobs
        self._lock = threading.Lock()
        self._generation = knobs.seed_generation
        self._rng = random.Random(knobs.fault_seed)

    def decide(self, scope: str) -> str | None:
        """``scope`` is "api" or "content"; returns a kind from FAULT_KINDS or None."""
        k = self.knobs
        with self._lock:
            for entry in k.fail_next:
                if entry["scope"] in ("all", scope):
                    entry["count"] -= 1
                    if entry["count"] <= 0:
                        k.fail_next.remove(entry)
                    return entry["kind"]
            if k.fault_scope not in ("all", scope):
                return None
            if k.seed_generation != self._generation:  # re-seeded through the knobs endpoint
                self._generation = k.seed_generation
                self._rng = random.Random(k.fault_seed)
            rates = [("error", k.error_rate), ("429", k.throttle_rate)]
            if scope == "content":
                rates += [("reset", k.reset_rate), ("truncate", k.truncate_rate)]
            rates.append(("stall", k.stall_rate))
            if not any(rate for _, rate in rates):
                return None  # no draw: adding a rate later starts from the seed's first value
            draw = self._rng.random()
            for kind, rate in rates:
                if draw < rate:
                    if kind == "error":
                        return "500" if self._rng.random() < 0.5 else "503"
                    return kind
                draw -= rate
            return None


class RateLimiter:
    """Per-token token buckets of ``knobs.rate_limit`` requests/s holding one second of requests.

    ``clock`` is injectable so that an in-process test can drive it with trio's MockClock."""

    def __init__(self, knobs: Knobs, clock=time.monotonic):
        self.knobs = knobs
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # token -> (tokens, stamp)

    def check(self, token: str) -> float | None:
        """None if this request may go on; else the Retry-After (whole seconds, >= 1) to answer."""
        rate = self.knobs.rate_limit
        if rate <= 0:
            return None
        capacity = max(1.0, rate)
        now = self.clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(token, (capacity, now))
            tokens = min(capacity, tokens + max(0.0, now - stamp) * rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[token] = (tokens, now)
            while len(self._buckets) > MAX_RATE_LIMITED_TOKENS:
                self._buckets.popitem(last=False)
        if allowed:
            return None
        return float(max(1, math.ceil((1.0 - tokens) / rate)))


class Counters:
    """Requests per route template, faults per kind, bytes of content bodies sent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.content_bytes = 0

    def request(self, route: str) -> None:
        self.requests[route] = self.requests.get(route, 0) + 1

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "faults": dict(self.faults), "content_bytes": self.content_bytes}
