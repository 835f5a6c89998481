"""A per-process request budget: a token bucket whose rate adapts to 429s (AIMD).

BaseSpace documents no rate limit and sends no rate-limit headers, so N cluster nodes mounting one
account make N times the calls against a budget nobody can see. Retrying each 429 after its
``Retry-After`` (retry.py) keeps a single request correct, but not the process polite: every
other request of the process would walk into the same wall. So every API request first takes a
token from one bucket per process:

* the bucket refills at ``rate`` requests/s and holds at most ``burst_seconds`` of them, so an
  idle process cannot fire a large burst when it wakes up;
* a 429 that is part of congestion (the first 429 of the process, or one whose previous answer was
  a 429 too, or when at least ``congestion_count`` of the last ``congestion_window`` answers were
  429s) cuts the rate by ``decrease`` (multiplicative decrease; concurrent 429s of one
  congestion episode count once) and pauses the whole bucket for the answer's ``Retry-After``.
  An isolated 429 only delays the request it answered (retry.py honours its Retry-After): a
  server or proxy that throttles a request now and then, at random, must not send every request
  of the process to the floor. Measured (tests/test_rate_limit.py): with 1 % of answers 429 at
  random, a budget that decreased on every 429 averaged 1.6 requests/s and ended at its floor;
  a quota shared by many processes makes 429s dense, and dense 429s still decrease at once;
* each success raises the rate by ``increase`` of itself per second of traffic (so growth is
  proportional to what the process already gets: with many clients sharing one server budget,
  the aggregate probes upwards gently), up to ``max_rate``;
* until the first 429 the growth is ``slow_start_increase`` instead (TCP's slow start): a server
  that never throttles is soon used at ``max_rate``, and the first 429 ends it for good;
* recovery: once no 429 has meant congestion for ``recovery_quiet_seconds``, the rate climbs back
  to where the last decrease cut it by ``recovery_increase`` requests/s per second of traffic
  (additive increase per window of successful answers), then grows by ``increase`` again. A
  decrease that comes before the rate got back there aims the next recovery lower (CUBIC's fast
  convergence: others took their share). Without it, one early 429 (the first one counts as
  congestion even at the untested start rate) held a mount at 2-5 requests/s for minutes;
  measured with 16 budgets on one 10/s quota, the share of 429s stays the same (8-9 %).

Requests wait in FIFO order (``trio.Lock`` is fair). The wait counts against the operation's
retry deadline like any other part of the request, so a starved budget ends as EIO, never a hang.
The content host (signed URLs) is not part of the API budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import trio

from ..options import MountOptions

__all__ = ["BudgetPolicy", "RequestBudget"]

_EPSILON = 1e-6


@dataclass(frozen=True)
class BudgetPolicy:
    """Every default of the request budget (the mount options --api-rate and --api-max-rate use them)."""

    rate: float = 5.0  # requests/s at start
    max_rate: float = MountOptions.api_max_rate  # ceiling of the additive increase (--api-max-rate)
    # Floor of the decrease: progress even when a server answers 429 at random. 16 daemons at the
    # floor still stay under a 10 requests/s quota (tests/test_rate_limit.py).
    min_rate: float = 0.5
    burst_seconds: float = 1.0  # bucket size, in seconds of the current rate (at least one token)
    decrease: float = 0.4  # rate factor on a 429
    increase: float = 0.01  # per success, rate += increase (≈ +1 % per second of full-rate traffic)
    # Recovery: once no 429 has meant congestion for recovery_quiet_seconds, each success adds
    # recovery_increase / rate, i.e. +recovery_increase requests/s per second of traffic at the
    # current rate (TCP's additive increase of one segment per window), until the next congestion.
    recovery_quiet_seconds: float = 30.0
    recovery_increase: float = 1.0
    slow_start_increase: float = 0.5  # the same before the first 429 (≈ +50 % per second)
    # After a decrease, further 429s within this many seconds (or the Retry-After, if longer)
    # belong to the same episode: requests already in flight were sent at the old rate.
    episode_seconds: float = 1.0
    # A 429 means congestion (decrease, pause) when it is the first, when the answer before it was
    # a 429 too, or when at least congestion_count of the last congestion_window answers were 429s: random 429s at 1 % almost never meet 3 in 50, while a
    # quota that N processes overrun answers a good share of their requests with 429.
    congestion_window: int = 50
    congestion_count: int = 3
    # A Retry-After pauses the whole process, but never longer than this: one answer saying
    # "come back in an hour" fails the request it answered (retry.py), not the whole mount.
    max_pause: float = 10.0

    @classmethod
    def capped(cls, max_rate: float) -> "BudgetPolicy":
        """The defaults under a ceiling of ``max_rate`` requests/s (the mount's --api-max-rate)."""
        default = cls()
        return cls(rate=min(default.rate, max_rate), max_rate=max_rate, min_rate=min(default.min_rate, max_rate))

    def __post_init__(self) -> None:
        if not 0 < self.min_rate <= self.rate <= self.max_rate:
            raise ValueError("the request budget needs 0 < min_rate <= rate <= max_rate")
        if not 0 < self.decrease < 1 or self.increase < 0 or self.burst_seconds <= 0:
            raise ValueError("the request budget needs 0 < decrease < 1, increase >= 0, burst_seconds > 0")
        if not 1 <= self.congestion_count <= self.congestion_window:
            raise ValueError("the request budget needs 1 <= congestion_count <= congestion_window")


class RequestBudget:
    def __init__(self, policy: BudgetPolicy = BudgetPolicy(), clock: Callable[[], float] = trio.current_time):
        self.policy = policy
        self.rate = policy.rate
        self._clock = clock
        self._tokens = self._capacity()
        self._stamp: float | None = None
        self._paused_until = 0.0
        self._episode_until = 0.0
        self._slow_start = True
        self._congested_at = -float("inf")  # when a 429 last meant congestion
        self._recover_to = 0.0  # the rate before the last decrease
        # the latest answers, True for a 429 (5xx and network errors say nothing about the budget)
        self._recent: deque[bool] = deque(maxlen=policy.congestion_window)
        self._lock = trio.Lock()
        self.stats = {"requests": 0, "throttled": 0, "decreases": 0, "waited_seconds": 0.0}

    def _capacity(self) -> float:
        return max(1.0, self.rate * self.policy.burst_seconds)

    def _refill(self, now: float) -> None:
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self._capacity(), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        """Wait for this process's turn to send one API request."""
        async with self._lock:
            started = self._clock()
            while True:
                now = self._clock()
                self._refill(now)
                if now < self._paused_until:
                    wait = self._paused_until - now
                elif self._tokens >= 1.0 - _EPSILON:  # float sums of refills fall just short of 1
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self.stats["requests"] += 1
                    self.stats["waited_seconds"] += now - started
                    return
                else:
                    wait = (1.0 - self._tokens) / self.rate
                await trio.sleep(max(wait, _EPSILON))

    def succeeded(self) -> None:
        self._recent.append(False)
        if self._slow_start:
            step = self.policy.slow_start_increase
        elif self.rate < self._recover_to and self._clock() - self._congested_at >= self.policy.recovery_quiet_seconds:
            step = max(self.policy.increase, min(self._recover_to - self.rate, self.policy.recovery_increase / max(self.rate, 1.0)))
        else:
            step = self.policy.increase
        self.rate = min(self.policy.max_rate, self.rate + step)

    def throttled(self, retry_after: float | None) -> None:
        """A 429 came back. If 429s are dense (congestion), slow the whole process down and pause it
        for ``retry_after`` s; an isolated one is left to the retry of the request it answered."""
        now = self._clock()
        self.stats["throttled"] += 1
        # the first 429 ever (it ends the slow start), two in a row (typically a retry after its
        # Retry-After answered 429 again) or dense 429s
        in_a_row = bool(self._recent) and self._recent[-1]
        self._recent.append(True)
        if not (self._slow_start or in_a_row or sum(self._recent) >= self.policy.congestion_count):
            return
        self._slow_start = False
        self._congested_at = now
        pause = min(self.policy.max_pause, max(0.0, retry_after or 0.0))
        if now >= self._episode_until:
            # congested again before getting back to where the last congestion was: that point is
            # too high now (others took their share), so aim lower (CUBIC's fast convergence)
            fell_short = self.rate < self._recover_to
            self._recover_to = self.rate * (1 + self.policy.decrease) / 2 if fell_short else self.rate
            self.rate = max(self.policy.min_rate, self.rate * self.policy.decrease)
            self.stats["decreases"] += 1
            self._episode_until = now + max(self.policy.episode_seconds, pause)
            self._tokens = min(self._tokens, self._capacity())
        if pause:
            self._paused_until = max(self._paused_until, now + pause)
