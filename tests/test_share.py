"""Sharing one kernel's work between guests (matrix/share.py): the queue's rules alone,
then whole runs against the fake guest, where a second guest joins a kernel when a run
slot is free, the first guest's driver hands over its unstarted jobs, and every artifact
is still validated exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bpfcompat.matrix.options import RunOptions
from bpfcompat.matrix.plan import Plan, discover_artifacts
from bpfcompat.matrix.runner import run_plan
from bpfcompat.matrix.share import KernelWork, SplitPolicy
from bpfcompat.matrix.store import Store
from bpfcompat.vm.spec import KernelSpec
from fake_guest import FakeWorld, Step

KERNEL = KernelSpec(id="debian-12-6.1", suite="bookworm", package="linux-image-fake")
EIGHT = [
    "simple-pass",
    "ringbuf",
    "bloom-filter-map",
    "tail-calls",
    "stack-trace-map",
    "kfunc-new",
    "cgrp-storage-map",
    "zero-sized-maps",
]
EAGER = SplitPolicy(min_jobs=2, min_seconds=0.0)


class FakeGuest:
    """A guest as the queue sees it: records whether it was asked to hand over."""

    def __init__(self, agrees: bool = True) -> None:
        self.asked = 0
        self.agrees = agrees

    def request_handover(self) -> bool:
        self.asked += 1
        return self.agrees


def jobs(n: int) -> list[Any]:
    return [(i, object()) for i in range(n)]


# --- the queue ---------------------------------------------------------------------------------


def test_the_first_guest_takes_everything_and_a_handover_splits_what_it_did_not_start() -> None:
    work = KernelWork(jobs(10), EAGER)
    first, second = FakeGuest(), FakeGuest()
    batch = work.take(first, first=False).jobs
    assert [i for i, _ in batch] == list(range(10))
    for _ in range(2):
        work.started(first)
    work.finished(1.0)
    assert work.wants_helper() == 8.0  # 8 unstarted jobs at 1 s each
    work.join()
    work.ready(True)
    got: list[Any] = []
    taker = threading.Thread(target=lambda: got.extend(work.take(second, first=False).jobs))
    taker.start()
    deadline = time.monotonic() + 5
    while not first.asked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.asked == 1
    # The first guest hands back the 7 jobs it never started (one more ran meanwhile).
    work.give_back(batch[3:], returning=first)
    work.batch_done(first)
    taker.join(5)
    mine = work.take(first, first=False).jobs
    assert sorted(i for i, _ in got + mine) == list(range(3, 10))
    assert len(got) == 4 and len(mine) == 3, "the waiting guest leaves the returning one its share"


def test_nothing_is_asked_below_the_policy_or_before_any_job_finished() -> None:
    work = KernelWork(jobs(10), SplitPolicy(min_jobs=3, min_seconds=5.0))
    first, second = FakeGuest(), FakeGuest()
    work.take(first, first=False)
    assert work.wants_helper() == 0.0, "no job finished yet: nothing to judge by"
    work.finished(0.1)
    assert work.wants_helper() == 0.0, "10 jobs at 0.1 s are not worth a guest"
    for _ in range(8):
        work.started(first)
    work.finished(10.0)
    assert work.wants_helper() == 0.0, "2 jobs left are under min_jobs"
    assert work.take(second, first=False).jobs == [] and first.asked == 0


def test_the_first_guest_waits_for_helpers_and_takes_what_a_failing_one_left() -> None:
    work = KernelWork(jobs(4), EAGER)
    first, helper = FakeGuest(), FakeGuest()
    work.join()
    work.ready(True)
    taken = work.take(helper, first=False).jobs  # the helper got there first
    assert len(taken) == 4
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.extend(work.take(first, first=True).jobs))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive(), "the first guest must not finish while a helper works"
    work.batch_done(helper, back=False)
    work.give_back(taken[2:])  # the helper's guest died with two jobs unstarted
    work.leave(lambda report: None)
    waiter.join(5)
    assert [i for i, _ in got] == [2, 3]


def test_a_closed_kernel_stops_helpers_and_returns_what_is_left() -> None:
    work = KernelWork(jobs(4), EAGER)
    assert [i for i, _ in work.close()] == [0, 1, 2, 3]
    assert work.take(FakeGuest(), first=False).jobs == [] and work.wants_helper() == 0.0


def test_a_guest_that_cannot_hand_over_is_not_waited_for() -> None:
    work = KernelWork(jobs(6), EAGER)
    first = FakeGuest(agrees=False)
    work.take(first, first=False)
    work.finished(1.0)
    assert work.take(FakeGuest(), first=False).jobs == [] and first.asked == 1


# --- whole runs against the fake guest ---------------------------------------------------------


def slow_world(seconds: float, names: list[str] = EIGHT) -> FakeWorld:
    """A fake guest where each artifact takes `seconds`: long enough for a second guest."""
    world = FakeWorld()
    for name in names:
        world.script(name, Step(seconds=seconds))
    return world


def _run(tmp_path: Path, examples: Path, world: FakeWorld, names: list[str], **options: Any) -> Any:
    artifacts = discover_artifacts([examples / n / f"{n}.bpf.o" for n in names])
    for artifact in artifacts:
        world.names[artifact.sha256] = artifact.name
    opts = RunOptions(
        workdir=tmp_path / "work", backend=world.backend(tmp_path / "fake"), **options
    )
    _, summary = run_plan(Plan([KERNEL], artifacts, "trixie"), Store(tmp_path / "s.db"), opts)
    return summary


def test_a_free_slot_brings_a_second_guest_and_every_artifact_runs_once(
    tmp_path: Path, built_examples: Path
) -> None:
    world = slow_world(0.3)
    summary = _run(tmp_path, built_examples, world, EIGHT, concurrency=2, split=EAGER)
    assert {c.artifact: c.status for c in summary.cells} == dict.fromkeys(EIGHT, "pass")
    assert world.attempts == dict.fromkeys(EIGHT, 1), "no artifact ran twice, none was lost"
    kernel = summary.kernels[0]
    assert kernel.helpers >= 1 and world.handovers >= 1, world.batches
    assert kernel.boots == 1 and world.boots == 1 + kernel.helpers
    # The first batch staged everything; after the handover each guest got a share.
    assert world.batches[0] == EIGHT and len(world.batches) >= 3, world.batches
    assert all(len(batch) < len(EIGHT) for batch in world.batches[1:])
    assert kernel.notes == []


def test_without_a_free_slot_or_with_sharing_off_one_guest_does_it_all(
    tmp_path: Path, built_examples: Path
) -> None:
    for n, options in enumerate(
        [{"concurrency": 1, "split": EAGER}, {"concurrency": 2, "split": None}]
    ):
        world = slow_world(0.1)
        summary = _run(tmp_path / str(n), built_examples, world, EIGHT, **options)
        assert world.boots == 1 and world.batches == [EIGHT] and world.handovers == 0
        assert summary.kernels[0].helpers == 0


def test_a_second_guest_that_cannot_start_costs_nothing_but_a_note(
    tmp_path: Path, built_examples: Path
) -> None:
    world = slow_world(0.2)

    def fail_next_boot(name: str) -> None:
        if name == EIGHT[0]:
            world.fail_boots = 1

    world.on_job = fail_next_boot
    summary = _run(tmp_path, built_examples, world, EIGHT, concurrency=2, split=EAGER)
    assert {c.artifact: c.status for c in summary.cells} == dict.fromkeys(EIGHT, "pass")
    kernel = summary.kernels[0]
    assert kernel.status == "ok" and kernel.helpers == 0 and world.boots == 2, "no second try"
    assert any("could not start to share the work" in n for n in kernel.notes), kernel.notes


def test_jobs_that_run_commands_stay_with_the_first_guest(
    tmp_path: Path, built_examples: Path
) -> None:
    names = [*EIGHT, "functional-execve"]
    world = slow_world(0.2, names)
    summary = _run(tmp_path, built_examples, world, names, concurrency=2, split=EAGER)
    assert world.attempts == dict.fromkeys(names, 1)
    assert ["functional-execve"] in world.batches, "it runs alone, in a fresh guest"
    assert all("functional-execve" not in b for b in world.batches if len(b) > 1)
    assert len(summary.cells) == len(names)


def test_a_handover_nobody_asked_for_is_ignored_and_the_jobs_are_not_lost(
    tmp_path: Path, built_examples: Path
) -> None:
    world = FakeWorld()
    world.script("ringbuf", Step("handover"))
    names = EIGHT[:4]
    summary = _run(tmp_path, built_examples, world, names, concurrency=1)
    assert {c.artifact: c.status for c in summary.cells} == dict.fromkeys(names, "pass")
    kernel = summary.kernels[0]
    assert any("ignored 1 guest protocol line" in n and "'handover'" in n for n in kernel.notes)
    assert world.attempts["ringbuf"] == 1 and world.boots == 2, "the rest ran after a reboot"


def test_jobs_an_oom_kill_stopped_wait_for_a_bigger_guest_that_any_guest_may_become() -> None:
    room = [False]
    work = KernelWork(jobs(4), EAGER, big_memory=2048, room_for_big=lambda memory_mb: room[0])
    first, helper = FakeGuest(), FakeGuest()
    batch = work.take(first, first=False)
    assert batch.memory_mb is None and len(batch.jobs) == 4
    work.grow(batch.jobs[1], 9.0)
    work.grow(batch.jobs[2], 9.0)
    work.finished(0.5)
    work.batch_done(first)
    assert work.wants_helper() == 0.0, "no room on the host for another big guest"
    assert not work.take(helper, first=False), "a helper takes big jobs only with room"
    room[0] = True
    assert work.wants_helper() == 18.0
    big = work.take(helper, first=False)
    assert big.memory_mb == 2048 and [i for i, _ in big.jobs] == [1, 2]
    work.batch_done(helper, back=False)
    work.give_back(big.jobs[1:], big=True)  # the big guest died after the first
    again = work.take(first, first=False)
    assert again.memory_mb == 2048 and [i for i, _ in again.jobs] == [2]


def test_oom_killed_jobs_are_rerun_bigger_once_each_while_the_work_is_shared(
    tmp_path: Path, built_examples: Path
) -> None:
    world = slow_world(0.2)
    for name in EIGHT[1:4]:
        world.script(name, Step("oom", seconds=0.2), Step(seconds=0.2))
    summary = _run(tmp_path, built_examples, world, EIGHT, concurrency=2, split=EAGER)
    got = {c.artifact: c for c in summary.cells}
    assert {a: c.status for a, c in got.items()} == dict.fromkeys(EIGHT, "pass")
    assert all(world.attempts[n] == 2 for n in EIGHT[1:4]), world.attempts
    assert all(world.attempts[n] == 1 for n in EIGHT[:1] + EIGHT[4:]), world.attempts
    assert all(any("2048 MB" in n for n in got[a].notes) for a in EIGHT[1:4])
    assert 2048 in [spec.memory_mb for spec in world.specs]
