"""Rate limits: the pool-wide pacing (`RateGovernor`), the 429 helpers (`retry_after`, `backoff`,
`quota_exhausted`) and the adaptive concurrency of the pool (`AdaptiveConcurrency`, TCP-style
additive increase and multiplicative decrease). See `client.py`'s docstring for how a request uses them."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

# Rate limits


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from retry-after-ms, or Retry-After as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: half of base * 2^(attempt-1) for sure, the other half random."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class RateGovernor:
    """Pacing shared by every request of one client, so a rate limit slows the whole pool.

    - `wait_turn` holds a request while the pool is paused and spaces request starts `interval`
      seconds apart, so the pool runs at the endpoint's limit instead of bouncing off it.
    - `on_rate_limited` (a 429) pauses the pool for Retry-After, or for an exponential backoff
      when the answer carries none.
    - `observe` reads the limits every answer advertises: x-ratelimit-limit-requests (per minute)
      and x-ratelimit-limit-tokens divided by the tokens a request uses on average; the tighter
      one, or `rpm_limit` when tighter still, sets the interval. The x-ratelimit-remaining-*
      headers are not used: they describe the limit when that request was admitted, and the
      requests sent since have already changed it.
    """

    def __init__(self, rpm_limit: float | None, backoff_base_s: float = 1.0, backoff_max_s: float = 60.0) -> None:
        self.rpm_limit = rpm_limit
        self.interval = 60.0 / rpm_limit if rpm_limit else 0.0
        self.paused_until = 0.0
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._next_start = 0.0
        self._limited_streak = 0
        self._tokens_per_request: float | None = None

    async def wait_turn(self) -> None:
        while True:
            now = time.monotonic()
            start = max(self.paused_until, self._next_start)
            if start <= now:
                # Starts follow a grid, so wake-up lag does not erode the rate, but never come
                # closer than half an interval: no back-to-back pair into a tight limit.
                self._next_start = max(self._next_start + self.interval, now + self.interval / 2)
                return
            await asyncio.sleep(start - now)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def on_rate_limited(self, headers: Mapping[str, str]) -> float:
        """Pause the pool after a 429 (and learn the limits it advertises); returns the pause in seconds."""
        self._learn_limits(headers)
        self._limited_streak += 1
        wait = retry_after(headers)
        if wait is None:
            wait = backoff(self._limited_streak, self.backoff_base_s, self.backoff_max_s)
        self.pause(wait)
        return wait

    def observe(self, headers: Mapping[str, str], tokens_used: int) -> None:
        """Learn the pace from an answer's x-ratelimit-limit-* headers and its token count."""
        self._limited_streak = 0
        if tokens_used:
            previous = self._tokens_per_request
            self._tokens_per_request = tokens_used if previous is None else 0.9 * previous + 0.1 * tokens_used
        self._learn_limits(headers)

    def _learn_limits(self, headers: Mapping[str, str]) -> None:
        advertised = []
        requests_per_minute = _float(headers.get("x-ratelimit-limit-requests"))
        if requests_per_minute:
            advertised.append(60.0 / requests_per_minute)
        tokens_per_minute = _float(headers.get("x-ratelimit-limit-tokens"))
        if tokens_per_minute and self._tokens_per_request:
            advertised.append(60.0 * self._tokens_per_request / tokens_per_minute)
        if advertised:
            self.interval = max(*advertised, 60.0 / self.rpm_limit if self.rpm_limit else 0.0)


def quota_exhausted(headers: Mapping[str, str], tokens_needed: int = 0) -> bool:
    """True when a 429's x-ratelimit-remaining-* headers say the request or token quota is spent
    (a rate limit: the whole pool must wait); False for a 429 without them (a concurrency limit)."""
    requests_left = _float(headers.get("x-ratelimit-remaining-requests"))
    tokens_left = _float(headers.get("x-ratelimit-remaining-tokens"))
    return (requests_left is not None and requests_left < 1) or (
        tokens_left is not None and tokens_left < max(1, tokens_needed)
    )


@dataclass
class Ticket:
    """What `AdaptiveConcurrency` needs to know about one request when its answer comes back."""

    seq: int
    """Order in which the pool's requests went on the wire."""
    on_wire: int
    """Requests of the pool on the wire when it went out, itself included."""
    full: bool
    """Every slot was taken when it went out (so its fate says something about the limit)."""
    epoch: int
    """The pool's epoch when it went out (the number of congestion events before it)."""


class AdaptiveConcurrency:
    """The pool's slots: at most `limit` requests at a time, where `limit` follows the endpoint.

    It starts at `maximum` (LLMConfig.concurrency) and never goes above it or below 1:
    - `refused` (a 429 that is not a spent quota) measures what the endpoint took: the requests
      sent before the refused one that are still out (they got in; the refused ones among them
      have come back by then). From a request sent in the current epoch it is a congestion event:
      the epoch advances and the limit drops to that count, but at most by half, so that one
      refusal out of order cannot collapse the pool. A refusal of a request sent before the drop
      belongs to that event: it lowers the limit to its count too, but not below the event's half.
    - `succeeded` for a request sent in the current epoch with every slot taken adds 1/limit
      (about one slot per round trip) up to `ceiling`, the most requests the endpoint has been seen
      to take at once. Beyond it the pool probes: each probe the endpoint refuses (it took no more
      than `ceiling` again) halves the growth above the ceiling, down to 1/(limit * MAX_PROBE_SLOWDOWN),
      and a probe it takes (a success with more on the wire than `ceiling`) restores full speed. So
      a fixed limit costs a handful of 429s per run, and a limit that grows is found again.

    Slots are handed out first come, first served; `acquire(first=True)` (a request retried after
    a 429) goes to the front of the queue, so that its rate-limit budget is spent waiting for the
    endpoint, not behind requests that have not been sent yet.
    """

    MAX_PROBE_SLOWDOWN = 32.0

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.ceiling: int | None = None
        self.epoch = 0
        self.in_use = 0
        self._wire: set[int] = set()
        self._seq = 0
        self._floor = 1.0
        self._probe_slowdown = 1.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def current(self) -> int:
        """Slots available now: the integer part of `limit`."""
        return max(1, min(self.maximum, int(self.limit)))

    @property
    def on_wire(self) -> int:
        return len(self._wire)

    async def acquire(self, first: bool = False) -> None:
        if self.in_use < self.current and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._waiters.appendleft if first else self._waiters.append)(waiter)
        try:
            await waiter  # `_wake` takes the slot on our behalf before it resolves the future
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.current:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def sent(self) -> Ticket:
        """Call as a request goes on the wire (holding a slot); pass the ticket to `returned`."""
        self._seq += 1
        self._wire.add(self._seq)
        return Ticket(seq=self._seq, on_wire=len(self._wire), full=self.in_use >= self.current, epoch=self.epoch)

    def returned(self, ticket: Ticket) -> None:
        self._wire.discard(ticket.seq)

    def refused(self, ticket: Ticket) -> None:
        """The endpoint refused a request for concurrency (a 429 without a spent quota); call after `returned`."""
        took = sum(1 for seq in self._wire if seq < ticket.seq)
        if ticket.epoch == self.epoch:
            self.epoch += 1
            self._floor = max(1.0, self.limit / 2)
            if self.ceiling is not None and took >= self.ceiling:  # a probe beyond the ceiling, refused
                self._probe_slowdown = min(self.MAX_PROBE_SLOWDOWN, self._probe_slowdown * 2)
        self.limit = max(self._floor, min(self.limit, float(took)))
        self.ceiling = max(1, took)

    def succeeded(self, ticket: Ticket) -> None:
        if ticket.epoch != self.epoch or not ticket.full or self.limit >= self.maximum:
            return  # sent under an older limit, or with slots to spare: no news about the endpoint
        if self.ceiling is not None and ticket.on_wire > self.ceiling:  # the endpoint took more than before
            self.ceiling = ticket.on_wire
            self._probe_slowdown = 1.0
        step = 1.0 / self.limit
        if self.ceiling is not None and self.limit >= self.ceiling:
            step /= self._probe_slowdown
        before = self.current
        self.limit = min(float(self.maximum), self.limit + step)
        if self.current > before:
            self._wake()


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

