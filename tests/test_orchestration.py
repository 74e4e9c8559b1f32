"""The orchestration (runner, guest session, store, cache) against a fake guest: retries,
crash attribution, isolation of artifacts that run commands, caching, bounds, interrupts.
No VM is booted; the guest side follows the real protocol with recorded real results."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.matrix.options import RunOptions
from bpfcompat.matrix.plan import Plan, discover_artifacts
from bpfcompat.matrix.runner import run_plan
from bpfcompat.matrix.store import Run, Store
from bpfcompat.report.html import render_html
from bpfcompat.report.view import RunView
from bpfcompat.vm.spec import KernelSpec
from fake_guest import PANIC, FakeWorld, Step, recorded_result

KERNEL = KernelSpec(id="debian-12-6.1", suite="bookworm", package="linux-image-fake")
THREE = ["simple-pass", "ringbuf", "bloom-filter-map"]


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


def _plan(examples: Path, names: list[str], world: FakeWorld, kernels: list[KernelSpec]) -> Plan:
    artifacts = discover_artifacts([examples / n / f"{n}.bpf.o" for n in names])
    for artifact in artifacts:
        world.names[artifact.sha256] = artifact.name
    return Plan(kernels, artifacts, "trixie")


def run(
    tmp_path: Path,
    examples: Path,
    world: FakeWorld,
    names: list[str],
    *,
    kernels: list[KernelSpec] | None = None,
    store: Store | None = None,
    use_cache: bool = True,
    **options: Any,
) -> tuple[Any, Store]:
    store = store or Store(tmp_path / "store.db")
    plan = _plan(examples, names, world, kernels or [KERNEL])
    opts = RunOptions(
        use_cache=use_cache,
        workdir=tmp_path / "work",
        backend=world.backend(tmp_path / "fake"),
        concurrency=1,
        **options,
    )
    _, summary = run_plan(plan, store, opts)
    return summary, store


def cells(summary: Any) -> dict[str, Any]:
    return {c.artifact: c for c in summary.cells}


# --- the plain path ---------------------------------------------------------------------------


def test_one_boot_for_every_artifact_and_a_cached_rerun_boots_nothing(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("verifier-oob", Step(result=recorded_result("verifier-oob")))
    names = ["simple-pass", "ringbuf", "verifier-oob"]
    summary, store = run(tmp_path, built_examples, world, names)
    got = cells(summary)
    assert got["simple-pass"].status == "pass" and got["ringbuf"].status == "pass"
    assert (got["verifier-oob"].status, got["verifier-oob"].code) == ("fail", "VERIFIER_REJECTION")
    assert world.boots == 1 and world.batches == [names]
    # verifier-oob fails exactly as its expect.yaml says: expected, so the run passes.
    assert got["verifier-oob"].expected is True and summary.exit_code == 0
    again, _ = run(tmp_path, built_examples, world, names, store=store)
    assert world.boots == 1, "every cell was final: nothing should boot"
    assert all(c.cached for c in again.cells)
    assert {c.artifact: (c.status, c.code) for c in again.cells} == {
        c.artifact: (c.status, c.code) for c in summary.cells
    }


# --- retries and what is cached ---------------------------------------------------------------


def test_a_dropped_connection_is_retried_once_on_a_fresh_boot(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("drop"), Step())
    summary, _ = run(tmp_path, built_examples, world, THREE)
    assert {c.artifact: c.status for c in summary.cells} == dict.fromkeys(THREE, "pass")
    assert world.boots == 2
    assert world.batches == [
        THREE,
        ["ringbuf", "bloom-filter-map"],
    ]


def test_an_infra_error_that_persists_costs_one_cell_and_is_never_cached(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("hang"), Step("hang"), Step())
    summary, store = run(tmp_path, built_examples, world, ["ringbuf", "simple-pass"])
    got = cells(summary)
    assert (got["ringbuf"].status, got["ringbuf"].code) == ("error", "INFRA_ERROR")
    assert "no progress" in (got["ringbuf"].evidence or "")
    assert got["simple-pass"].status == "pass"
    assert summary.exit_code == 1
    again, _ = run(tmp_path, built_examples, world, ["ringbuf", "simple-pass"], store=store)
    assert cells(again)["ringbuf"].status == "pass" and not cells(again)["ringbuf"].cached
    assert cells(again)["simple-pass"].cached


def test_a_functional_failure_is_not_cached_and_a_flaky_pass_is_marked(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    failing = recorded_result("functional-execve", "debian-13-6.12-lockdown")
    assert failing["functional"]["status"] == "fail"
    flaky = recorded_result("functional-execve")
    flaky["functional"]["flaky"] = True
    flaky["functional"]["tests"][0].update(attempts=2, flaky=True, failed_attempts=["exit 1"])
    world.script("functional-execve", Step(result=failing), Step(result=flaky))
    first, store = run(tmp_path, built_examples, world, ["functional-execve"])
    assert cells(first)["functional-execve"].code == "FUNCTIONAL_TEST_FAILURE"
    second, _ = run(tmp_path, built_examples, world, ["functional-execve"], store=store)
    cell = cells(second)["functional-execve"]
    assert cell.status == "pass" and cell.flaky and not cell.cached
    assert any("flaky" in note for note in cell.notes)
    third, _ = run(tmp_path, built_examples, world, ["functional-execve"], store=store)
    assert not cells(third)["functional-execve"].cached, "a flaky pass is not final"


# --- crashes: whose fault ---------------------------------------------------------------------


def test_a_crash_that_does_not_recur_alone_blames_no_artifact(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("crash"), Step())
    summary, store = run(tmp_path, built_examples, world, THREE)
    got = cells(summary)
    assert {a: c.status for a, c in got.items()} == dict.fromkeys(got, "pass")
    assert any("crashed once" in n for n in got["ringbuf"].notes)
    assert world.batches[1:] == [["ringbuf"], ["bloom-filter-map"]]
    (kernel,) = store.kernels(summary.run_id)
    assert any("crashed once" in n for n in kernel.notes)


def test_a_crash_that_recurs_alone_is_the_artifacts_with_the_panic_line(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("crash"), Step("crash"))
    summary, store = run(tmp_path, built_examples, world, THREE)
    got = cells(summary)
    assert (got["ringbuf"].status, got["ringbuf"].code) == ("fail", "KERNEL_CRASH")
    assert got["ringbuf"].evidence == PANIC.strip()
    assert got["bloom-filter-map"].status == "pass"
    again, _ = run(tmp_path, built_examples, world, ["ringbuf"], store=store)
    assert not cells(again)["ringbuf"].cached, "a crash is never replayed from the cache"


def test_a_user_space_rip_line_is_never_crash_evidence(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("userrip"), Step("userrip"))
    summary, _ = run(tmp_path, built_examples, world, ["ringbuf"])
    cell = cells(summary)["ringbuf"]
    assert cell.code != "KERNEL_CRASH"
    assert "RIP: 0033" not in (cell.evidence or "")


def test_a_crash_between_jobs_is_charged_to_nobody(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("simple-pass", Step("crash-between"), Step())
    summary, store = run(tmp_path, built_examples, world, ["simple-pass", "ringbuf"])
    assert {c.artifact: c.status for c in summary.cells} == {
        "simple-pass": "pass",
        "ringbuf": "pass",
    }
    assert world.batches == [["simple-pass", "ringbuf"], ["ringbuf"]]
    (kernel,) = store.kernels(summary.run_id)
    assert any("outside any job" in n for n in kernel.notes)


def test_a_kernel_that_panics_while_booting_blames_no_artifact(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.crash_on_boot = 5
    summary, store = run(tmp_path, built_examples, world, ["simple-pass", "ringbuf"])
    assert {c.status for c in summary.cells} == {"error"}
    assert all(c.code != "KERNEL_CRASH" for c in summary.cells)
    (kernel,) = store.kernels(summary.run_id)
    assert kernel.status == "error" and "Kernel panic" in (kernel.error or "")
    assert summary.exit_code == 1


# --- isolation of artifacts that run commands -------------------------------------------------


def test_an_artifact_with_functional_tests_runs_alone_and_cannot_forge_others(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    """The forger writes passing results and protocol lines for every other job of its
    batch; it must have no other job in its batch, and its guest must not be reused."""
    world.script("functional-execve", Step("forge", result=recorded_result("functional-execve")))
    world.script("verifier-oob", Step(result=recorded_result("verifier-oob")))
    world.script("helper-not-allowed", Step(result=recorded_result("helper-not-allowed")))
    names = ["functional-execve", "verifier-oob", "helper-not-allowed"]
    summary, store = run(tmp_path, built_examples, world, names)
    got = cells(summary)
    assert got["verifier-oob"].code == "VERIFIER_REJECTION"
    assert got["helper-not-allowed"].code == "HELPER_NOT_ALLOWED"
    assert ["functional-execve"] in world.batches
    for batch in world.batches:
        assert "functional-execve" not in batch or batch == ["functional-execve"]
    (kernel,) = store.kernels(summary.run_id)
    assert any("ignored" in n and "99999" in n for n in kernel.notes)


def test_each_artifact_that_runs_commands_gets_its_own_fresh_guest(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    names = ["functional-execve", "simple-pass", "runtime-sized-maps"]
    summary, _ = run(tmp_path, built_examples, world, names)
    # It runs first, in the guest just booted, which is then discarded: the others get a
    # guest of their own that nothing ran in before.
    assert world.batches == [["functional-execve"], ["simple-pass", "runtime-sized-maps"]]
    assert world.boots == 2
    assert {c.status for c in summary.cells} == {"pass"}


# --- bounds -----------------------------------------------------------------------------------


def test_an_oversize_or_deeply_nested_result_costs_its_cell_only(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("raw", raw=b"{" + b" " * (17 << 20) + b"}"))
    world.script("bloom-filter-map", Step("raw", raw=b"[" * 100_000 + b"]" * 100_000))
    names = ["ringbuf", "bloom-filter-map", "simple-pass"]
    summary, _ = run(tmp_path, built_examples, world, names)
    got = cells(summary)
    assert got["ringbuf"].code == "INFRA_ERROR" and "byte cap" in (got["ringbuf"].evidence or "")
    assert got["bloom-filter-map"].code == "INFRA_ERROR"
    assert "levels deep" in (got["bloom-filter-map"].evidence or "")
    assert got["simple-pass"].status == "pass"
    assert world.boots == 1, "a result over a cap is not a reason to reboot"


def test_an_oom_kill_and_a_signal_are_told_apart(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("ringbuf", Step("oom"), Step("oom"))
    world.script("simple-pass", Step("signal", code=11))
    summary, _ = run(tmp_path, built_examples, world, ["ringbuf", "simple-pass"])
    got = cells(summary)
    # Twice: once in the kernel's 512 MB, once alone in 2048 MB; never a third time.
    assert world.attempts["ringbuf"] == 2 and any("2048 MB" in n for n in got["ringbuf"].notes)
    assert got["ringbuf"].code == "INFRA_ERROR" and "Out of memory" in (
        got["ringbuf"].evidence or ""
    )
    assert got["simple-pass"].status == "error" and "signal 11" in (
        got["simple-pass"].evidence or ""
    )


def test_an_oom_killed_job_runs_again_in_a_bigger_guest_after_the_rest(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    """The guest's memory is ours to choose: an OOM kill is not a verdict until the job
    ran again with more; its neighbours go on in the guest of the kernel's own size."""
    world.script("ringbuf", Step("oom"), Step())
    summary, store = run(tmp_path, built_examples, world, THREE)
    got = cells(summary)
    assert {a: c.status for a, c in got.items()} == dict.fromkeys(THREE, "pass")
    assert world.batches == [THREE, ["ringbuf"]]
    assert [spec.memory_mb for spec in world.specs] == [512, 2048]
    (note,) = got["ringbuf"].notes
    assert "512 MB" in note and "2048 MB" in note
    assert not got["simple-pass"].notes
    again, _ = run(tmp_path, built_examples, world, ["ringbuf"], store=store)
    assert cells(again)["ringbuf"].cached, "the bigger guest's answer is final"


def test_a_map_the_guest_could_not_allocate_is_retried_with_more_memory(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    """ENOMEM creating a map in a 512 MB guest says nothing about the kernel: the job runs
    again with more memory, and a second ENOMEM there is the verdict. Both such jobs share
    one bigger guest, after the rest."""
    starved = recorded_result("ringbuf")
    # edit: the map creation fails as huge maps did in a small guest (katran's, for one)
    starved["status"] = "fail"
    starved["load"].update(
        status="fail", stage="load", error_code=12, error="Cannot allocate memory",
        errno_name="ENOMEM", failed_map="exec_events",
        libbpf_messages=["map 'exec_events': failed to create: Cannot allocate memory(-12)"],
    )  # fmt: skip
    world.script("ringbuf", Step(result=starved), Step())
    world.script("bloom-filter-map", Step(result=starved), Step(result=starved))
    summary, _ = run(tmp_path, built_examples, world, THREE)
    got = cells(summary)
    assert got["ringbuf"].status == "pass"
    assert got["bloom-filter-map"].status == "fail" and world.attempts["bloom-filter-map"] == 2
    assert [spec.memory_mb for spec in world.specs] == [512, 2048]
    assert world.batches == [THREE, ["ringbuf", "bloom-filter-map"]]
    assert all("2048 MB" in " ".join(got[a].notes) for a in ("ringbuf", "bloom-filter-map"))


# --- the run's own bookkeeping ----------------------------------------------------------------


def test_a_boot_that_fails_twice_marks_the_kernel_and_its_cells(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.fail_boots = 2
    summary, store = run(tmp_path, built_examples, world, ["simple-pass"])
    (cell,) = summary.cells
    assert (cell.status, cell.code) == ("error", "INFRA_ERROR")
    assert "boot failed" in (cell.evidence or "")
    assert store.kernels(summary.run_id)[0].status == "error"


def test_an_interrupt_mid_run_keeps_finished_cells(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    holder: dict[str, Any] = {}

    def interrupt(name: str) -> None:
        if name == "bloom-filter-map":
            holder["runner"].interrupt()

    world.on_job = interrupt
    store = Store(tmp_path / "store.db")
    plan = _plan(built_examples, THREE, world, [KERNEL])
    opts = RunOptions(workdir=tmp_path / "w", backend=world.backend(tmp_path / "f"), concurrency=1)
    from bpfcompat.matrix.runner import MatrixRunner

    runner = MatrixRunner(plan, store, opts)
    holder["runner"] = runner
    summary = runner.run()
    assert summary.status == "interrupted" and summary.exit_code == 130
    assert [c.artifact for c in summary.cells] == ["simple-pass", "ringbuf"]
    assert store.run(summary.run_id).status == "interrupted"


def test_an_unexpected_exception_marks_the_run_failed(
    tmp_path: Path, built_examples: Path, world: FakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bpfcompat.matrix import runner as runner_module

    def boom(self: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(runner_module.MatrixRunner, "_run_kernels", boom)
    store = Store(tmp_path / "store.db")
    with pytest.raises(RuntimeError):
        run(tmp_path, built_examples, world, ["simple-pass"], store=store)
    (stored,) = store.runs()
    assert stored.status == "failed" and "RuntimeError: boom" in (stored.error or "")


def test_a_run_whose_process_died_is_marked_interrupted_at_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = Store(db)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(child.stdout)
    from bpfcompat.matrix.store import process_identity

    mine = process_identity()
    store.add(Run(pid=dead, proc_start="1", hostname=mine["hostname"]))
    alive = store.add(Run(**mine))
    reopened = Store(db)
    by_id = {r.id: r for r in reopened.runs()}
    assert by_id[alive.id].status == "running"
    dead_run = next(r for r in by_id.values() if r.pid == dead)
    assert dead_run.status == "interrupted" and str(dead) in (dead_run.error or "")


def test_kernels_run_in_parallel_threads_without_sharing_guests(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    kernels = [
        KernelSpec(id=f"k{i}", suite="bookworm", package=f"linux-image-{i}") for i in range(3)
    ]
    summary, _ = run(tmp_path, built_examples, world, ["simple-pass", "ringbuf"], kernels=kernels)
    assert len(summary.cells) == 6 and {c.status for c in summary.cells} == {"pass"}
    assert world.boots == 3
    assert sorted(map(sorted, world.batches)) == [["ringbuf", "simple-pass"]] * 3


def test_each_kernel_records_its_own_arch_and_how_it_ran(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    """On a KVM host an arm64 guest is still emulated: the run says kvm, that kernel tcg."""
    kernels = [
        KernelSpec(id="x86", suite="bookworm", package="linux-image-amd64"),
        KernelSpec(id="arm", suite="bookworm", package="linux-image-arm64", arch="aarch64"),
    ]
    store = Store(tmp_path / "store.db")
    backend = dataclasses.replace(world.backend(tmp_path / "fake"), accel=lambda: "kvm")
    opts = RunOptions(workdir=tmp_path / "work", backend=backend, concurrency=1)
    _, summary = run_plan(_plan(built_examples, ["simple-pass"], world, kernels), store, opts)
    got = {k.kernel_id: (k.arch, k.accel) for k in store.kernels(summary.run_id)}
    assert got == {"x86": ("x86_64", "kvm"), "arm": ("aarch64", "tcg")}
    page = render_html(RunView.from_store(store, summary.run_id))
    assert "aarch64 · tcg" in page and "x86_64 · kvm" in page


# --- expectations -----------------------------------------------------------------------------


def test_a_cell_that_differs_from_its_expectation_fails_the_run(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    """ringbuf is expected to pass; a verifier rejection there is a new failure (exit 2),
    while verifier-oob's own expected rejection does not count."""
    world.script("ringbuf", Step(result=recorded_result("verifier-oob")))
    world.script("verifier-oob", Step(result=recorded_result("verifier-oob")))
    summary, store = run(tmp_path, built_examples, world, ["ringbuf", "verifier-oob"])
    got = cells(summary)
    assert (got["ringbuf"].expected, got["ringbuf"].expectation) == (False, "pass")
    assert got["verifier-oob"].expected is True
    assert summary.exit_code == 2
    page = render_html(RunView.from_store(store, summary.run_id))
    assert 'id="expectations"' in page and "as expected <b>1</b> · unexpected <b>1</b>" in page
    assert page.count(">UNEXPECTED</span>") == 1 and page.count(">expected</span>") == 1
    assert "pass — did not hold" in page and "fail VERIFIER_REJECTION — held" in page


def test_an_unexpected_pass_fails_the_run_too(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    world.script("verifier-oob", Step())  # passes, though its expect.yaml says it fails
    summary, _ = run(tmp_path, built_examples, world, ["verifier-oob"])
    (cell,) = summary.cells
    assert cell.status == "pass" and cell.expected is False
    assert cell.expectation == "fail VERIFIER_REJECTION"
    assert summary.exit_code == 2


def test_without_expectations_failures_fail_as_before(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    shutil.copy(built_examples / "verifier-oob" / "verifier-oob.bpf.o", tmp_path / "vo.bpf.o")
    artifacts = discover_artifacts([tmp_path / "vo.bpf.o"])
    world.names[artifacts[0].sha256] = "verifier-oob"
    world.script("verifier-oob", Step(result=recorded_result("verifier-oob")))
    store = Store(tmp_path / "store.db")
    opts = RunOptions(workdir=tmp_path / "w", backend=world.backend(tmp_path / "f"), concurrency=1)
    _, summary = run_plan(Plan([KERNEL], artifacts, "trixie"), store, opts)
    (cell,) = summary.cells
    assert cell.expected is None and cell.code == "VERIFIER_REJECTION"
    assert summary.exit_code == 2


def test_a_cached_cell_is_judged_by_todays_expectations(
    tmp_path: Path, built_examples: Path, world: FakeWorld
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built_examples / "verifier-oob", copy / "verifier-oob")
    world.script("verifier-oob", Step(result=recorded_result("verifier-oob")))
    first, store = run(tmp_path, copy, world, ["verifier-oob"])
    assert first.exit_code == 0
    (copy / "verifier-oob" / "expect.yaml").write_text("default: {status: pass}\n")
    again, _ = run(tmp_path, copy, world, ["verifier-oob"], store=store)
    (cell,) = again.cells
    assert cell.cached and cell.expected is False and again.exit_code == 2
