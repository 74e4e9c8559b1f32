"""Guest-side job driver, baked into the guest image with the validator package and run as
``python3 -m bpfcompat.validator.driver JOBS.json``.

Imports the validator once, then forks one child per job so a libbpf crash costs only
that artifact. Each child's stdout/stderr go to files in its job dir; the driver's stdout
carries only "start TOKEN" / "done TOKEN RC SECONDS HOW" lines, TOKEN being the job's
random token from the host (which ignores any line that does not name the job it expects
next), HOW "timeout" when the driver killed a job over its timeout (SIGKILL, RC 137) and
"exit" otherwise, so another SIGKILL (the kernel's OOM killer) is not mistaken for a
timeout. Jobs arrive as JSON, never through a shell. When the host creates JOBS.json.stop
(another guest of the same kernel is ready to share the work), the driver prints
"handover" instead of starting the next job and exits: the host runs the rest elsewhere.
Runs on the guest's python (3.9+), stdlib only.
"""

import json
import os
import shutil
import signal
import sys
import time

from .run import main as validate


def run(job: dict) -> tuple:
    pid = os.fork()
    if pid == 0:
        try:
            for fd, name in ((1, "stdout"), (2, "stderr")):
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                out = os.open(os.path.join(job["dir"], name), flags)
                os.dup2(out, fd)
            code = validate(job["args"])
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    timed_out = []

    def kill(*_: object) -> None:
        timed_out.append(True)
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, kill)
    signal.alarm(max(1, int(job["timeout"])))
    _, status = os.waitpid(pid, 0)
    signal.alarm(0)
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, "timeout" if timed_out else "exit"


def main(jobs_file: str) -> None:
    with open(jobs_file) as fh:
        jobs = json.load(fh)
    stop = jobs_file + ".stop"
    for n, job in enumerate(jobs):
        if os.path.exists(stop):
            # The jobs not started are staged again wherever they run: free the guest's
            # memory (its /tmp is RAM) of their copies here.
            for left in jobs[n:]:
                shutil.rmtree(left["dir"], ignore_errors=True)
            print("handover", flush=True)
            return
        print("start", job["token"], flush=True)
        started = time.monotonic()
        code, how = run(job)
        print("done", job["token"], code, round(time.monotonic() - started, 3), how, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
