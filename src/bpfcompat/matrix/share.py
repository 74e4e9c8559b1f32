"""One kernel's trusted jobs, shared by every guest of that kernel in a run.

A kernel's first guest takes all of them as one batch. When a run slot is free and no
kernel waits for one, another guest of the same kernel may join (restored from the
kernel's snapshot, joining costs well under a boot): the guest with the most jobs not yet
started is asked to hand over (its driver stops before its next job, matrix/guest.py), and
the jobs it hands back are split between the guests waiting for work. A guest that runs
out of work asks the same of the busiest other guest, so the kernel's last minutes are
not spent by one guest while another idles. Jobs that taint their guest never move: they
stay with the first guest and its fresh boots. Jobs the OOM killer stopped wait in a
queue of their own for a bigger guest, which any guest of the kernel may become when the
host has the memory for it.

A handover costs a new batch (an upload and a driver start, well under a second), so it
is asked only when the jobs left are expected to take a while, judged from this kernel's
jobs so far.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bpfcompat.matrix.plan import Artifact

Job = tuple[int, Artifact]


class Guest(Protocol):
    """What the work needs of a guest: that it can be asked to hand over."""

    def request_handover(self) -> bool: ...


@dataclass(frozen=True)
class SplitPolicy:
    """When a guest's unstarted jobs are worth moving to another guest."""

    min_jobs: int = 3
    min_seconds: float = 8.0  # their expected time, at this kernel's average job so far


@dataclass(frozen=True)
class Batch:
    """Jobs for one guest; `memory_mb`: they need a guest this big (an OOM kill's re-run)."""

    jobs: list[Job]
    memory_mb: int | None = None

    def __bool__(self) -> bool:
        return bool(self.jobs)


@dataclass
class HelperReport:
    """What the guests that joined did, for the kernel's row."""

    joined: int = 0
    jobs: int = 0
    notes: list[str] = field(default_factory=list)
    ignored_lines: list[str] = field(default_factory=list)
    peak_rss_kb: int = 0


class KernelWork:
    """The queue of one kernel's trusted jobs and the guests working on it."""

    def __init__(
        self,
        jobs: list[Job],
        policy: SplitPolicy,
        stop: threading.Event | None = None,
        *,
        big_memory: int | None = None,
        room_for_big: Callable[[int], bool] = lambda memory_mb: True,
    ) -> None:
        self.policy = policy
        self.big_memory = big_memory
        self._room_for_big = room_for_big
        self.report = HelperReport()
        self._stop = stop or threading.Event()
        self._cond = threading.Condition()
        self._queue: list[Job] = list(jobs)
        self._big: list[Job] = []  # OOM-killed once: for a guest of `big_memory`
        self._big_seconds = 0.0  # what their killed attempts took: a floor for their re-runs
        self._unstarted: dict[Guest, int] = {}  # guest -> jobs of its batch not yet started
        self._asked: set[Guest] = set()  # guests asked to hand over, not yet back
        self._returning: set[Guest] = set()  # handed over, about to take their share
        self._waiting = 0  # guests in take()
        self._helpers = 0  # guests that joined and have not left
        self._joining = 0  # of those, still getting ready
        self._no_more = False  # a helper failed to start
        self._done = 0
        self._seconds = 0.0
        self.closed = False

    # --- the first guest and the helpers ---------------------------------------------------

    def take(self, guest: Guest, *, first: bool) -> Batch:
        """The next batch for `guest` (empty: it should stop). Waits while another guest
        is asked to hand over; the first guest also waits for every helper to leave, so
        jobs a failing helper hands back are never stranded. The first guest may always
        take the bigger-guest jobs (as it would alone); a helper only with room for them."""
        with self._cond:
            self._waiting += 1
            self._returning.discard(guest)
            try:
                while not self._stop.is_set():
                    takers = max(1, self._waiting + len(self._returning))
                    if self._queue:
                        n = math.ceil(len(self._queue) / takers)
                        batch, self._queue = self._queue[:n], self._queue[n:]
                        self._unstarted[guest] = len(batch)
                        return Batch(batch)
                    if self._big and (first or self._room_for_big(self.big_memory or 0)):
                        n = math.ceil(len(self._big) / takers)
                        batch, self._big = self._big[:n], self._big[n:]
                        return Batch(batch, self.big_memory)
                    if self.closed and not first:
                        return Batch([])
                    victim = None if self.closed else self._victim(exclude=guest)
                    if victim is not None:
                        self._ask(victim)
                    elif not self._asked and not (first and self._helpers):
                        return Batch([])
                    self._cond.wait(0.5)
                return Batch([])
            finally:
                self._waiting -= 1

    def started(self, guest: Guest) -> None:
        with self._cond:
            if self._unstarted.get(guest, 0) > 0:
                self._unstarted[guest] -= 1

    def helped(self) -> None:
        with self._cond:
            self.report.jobs += 1

    def finished(self, seconds: float) -> None:
        with self._cond:
            self._done += 1
            self._seconds += max(0.0, seconds)

    def batch_done(self, guest: Guest, *, back: bool = True) -> None:
        """The guest's batch ended; `back`: it comes back for more (else it failed)."""
        with self._cond:
            self._unstarted.pop(guest, None)
            self._asked.discard(guest)
            if not back:
                self._returning.discard(guest)
            self._cond.notify_all()

    def give_back(self, jobs: list[Job], returning: Guest | None = None, big: bool = False) -> None:
        """Jobs a guest never started: handed over (`returning`: the guest comes back for
        its share), or left by a guest that failed (`big`: from a bigger guest's batch)."""
        with self._cond:
            if returning is not None:
                self._returning.add(returning)
            if big:
                self._big = sorted([*self._big, *jobs], key=lambda job: job[0])
            else:
                self._queue = sorted([*self._queue, *jobs], key=lambda job: job[0])
            self._cond.notify_all()

    def grow(self, job: Job, seconds: float) -> None:
        """A job the OOM killer stopped: it runs again in a bigger guest."""
        with self._cond:
            self._big.append(job)
            self._big_seconds += max(0.0, seconds)
            self._cond.notify_all()

    def close(self) -> list[Job]:
        """The first guest failed: helpers finish their batches and stop; the jobs left
        (returned) are the kernel's failure."""
        with self._cond:
            self.closed = True
            left, self._queue, self._big = self._queue + self._big, [], []
            self._cond.notify_all()
            return left

    def wait_helpers(self) -> None:
        with self._cond:
            while self._helpers and not self._stop.is_set():
                self._cond.wait(0.5)

    # --- joining ---------------------------------------------------------------------------

    def wants_helper(self) -> float:
        """Seconds of work a new guest could take over now (0: not worth starting one)."""
        with self._cond:
            if self.closed or self._no_more or self._asked or self._joining:
                return 0.0  # a handover, or a guest that is still joining, comes first
            victim = self._victim(exclude=None)
            best = self._expected(self._unstarted[victim]) if victim is not None else 0.0
            big = self._big and self._big_seconds >= self.policy.min_seconds
            if big and self._room_for_big(self.big_memory or 0):
                best = max(best, self._big_seconds)
            return best

    def join(self) -> None:
        """A helper is on its way: the first guest will wait for it before finishing."""
        with self._cond:
            self._helpers += 1
            self._joining += 1

    def ready(self, ok: bool) -> None:
        """The helper's guest is up (`ok`) or could not start (then no other is tried: a
        kernel whose guests fail to start would only fail again)."""
        with self._cond:
            self._joining -= 1
            self.report.joined += ok
            self._no_more |= not ok

    def leave(self, merge: Callable[[HelperReport], None]) -> None:
        with self._cond:
            merge(self.report)
            self._helpers -= 1
            self._cond.notify_all()

    # --- inside the lock -------------------------------------------------------------------

    def _expected(self, jobs: int) -> float:
        if not self._done:
            return 0.0  # no job finished yet: nothing to judge by
        return jobs * self._seconds / self._done

    def _victim(self, exclude: Guest | None) -> Guest | None:
        """The busiest other guest, if its unstarted jobs are worth moving."""
        best, most = None, 0
        for guest, unstarted in self._unstarted.items():
            if guest is exclude or guest in self._asked:
                continue
            if unstarted > most:
                best, most = guest, unstarted
        if best is None or most < self.policy.min_jobs:
            return None
        return best if self._expected(most) >= self.policy.min_seconds else None

    def _ask(self, victim: Guest) -> None:
        """Ask outside the lock (it is a command to the guest); a guest that cannot hand
        over (its batch just ended) is simply not waited for."""
        self._asked.add(victim)
        self._cond.release()
        try:
            asked = victim.request_handover()
        finally:
            self._cond.acquire()
        if not asked:
            self._asked.discard(victim)
            self._unstarted.pop(victim, None)
