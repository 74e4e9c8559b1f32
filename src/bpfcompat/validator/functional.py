"""Functional tests: the project's own commands, run while the links are alive."""

from __future__ import annotations

import contextlib
import os
import time

from .args import load_functional_plan
from .limits import MAX_TEST_RETRIES, OUTPUT_TAIL
from .state import RunState
from .util import decode, tail_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any


class FunctionalSteps(RunState):
    """Each command without a shell, in its own session, bounded."""

    # -- functional tests
    def step_functional(self) -> None:
        functional = self.result["functional"]
        if self.config.plan_path:
            self.plan_tests, self.plan_error = load_functional_plan(self.config.plan_path)
        if self.plan_error:
            functional["status"] = "fail"
            functional["tests"] = [self._test_record({"name": "functional-plan", "command": ""})]
            functional["tests"][0].update(status="fail", error=self.plan_error)
            return
        if not self.plan_tests:
            return
        if self.result["load"]["status"] != "pass":
            for test in self.plan_tests:
                record = self._test_record(test)
                record.update(status="skipped", error="object did not load")
                functional["tests"].append(record)
            return
        self.log.mark("functional tests")
        for test in self.plan_tests:
            functional["tests"].append(self._run_with_retries(test))
        failed = [t for t in functional["tests"] if t["required"] and t["status"] != "pass"]
        functional["status"] = "fail" if failed else "pass"
        functional["flaky"] = any(t["flaky"] for t in functional["tests"])

    def _run_with_retries(self, test: dict[str, Any]) -> dict[str, Any]:
        """Run a test again (links still alive) while it fails and retries are left.

        A test that passes only on a later attempt is reported as passed and flaky, with
        why each earlier attempt failed, so nobody mistakes it for a stable pass."""
        failures: list[str] = []
        for _attempt in range(1 + int(test.get("retries", 0))):
            record = self._run_test(test)
            if record["status"] == "pass":
                break
            failures.append(record["error"] or "failed")
        record["attempts"] = len(failures) + (record["status"] == "pass")
        record["failed_attempts"] = failures[: MAX_TEST_RETRIES + 1]
        record["flaky"] = record["status"] == "pass" and bool(failures)
        return record

    def _test_record(self, test: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": test["name"],
            "required": test.get("required", True),
            "status": "fail",
            "command": test["command"],
            "timeout_seconds": test.get("timeout_seconds", 0),
            "expected_exit_code": test.get("expect_exit_code", 0),
            "exit_code": None,
            "timed_out": False,
            "stdout_tail": "",
            "stderr_tail": "",
            "error": None,
            "duration_seconds": None,
            "attempts": 0,
            "failed_attempts": [],
            "flaky": False,
        }

    def _run_test(self, test: dict[str, Any]) -> dict[str, Any]:
        """Run one command without a shell, in its own session so a timeout kills it all."""
        import shlex
        import signal
        import subprocess

        record = self._test_record(test)
        try:
            argv = shlex.split(test["command"])
        except ValueError as exc:
            record["error"] = f"cannot split command: {exc}"
            return record
        begin = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            record["error"] = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            return record
        out, err = b"", b""
        problems = []
        try:
            out, err = proc.communicate(timeout=test["timeout_seconds"])
        except subprocess.TimeoutExpired:
            exited = proc.poll() is not None
            record["timed_out"] = not exited
            if exited:
                problems.append("background processes still held stdout/stderr at the timeout")
            else:
                problems.append(f"timed out after {test['timeout_seconds']:g}s")
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append("output pipes stayed open after kill")
        finally:
            with contextlib.suppress(OSError):  # reap what the command left in its session
                os.killpg(proc.pid, signal.SIGKILL)
        record["duration_seconds"] = round(time.monotonic() - begin, 4)
        record["exit_code"] = proc.poll()
        stdout, stderr = decode(out), decode(err)
        record["stdout_tail"] = tail_text(stdout, OUTPUT_TAIL)
        record["stderr_tail"] = tail_text(stderr, OUTPUT_TAIL)
        if not record["timed_out"]:
            if record["exit_code"] != test["expect_exit_code"]:
                problems.append(
                    f"exit code {record['exit_code']}, expected {test['expect_exit_code']}"
                )
            for key, text in (("stdout", stdout), ("stderr", stderr)):
                want = test[f"expect_{key}_contains"]
                if want is not None and want not in text:
                    problems.append(f"{key} does not contain {want!r}")
        record["status"] = "fail" if problems else "pass"
        record["error"] = "; ".join(problems) or None
        return record
