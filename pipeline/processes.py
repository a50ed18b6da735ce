"""Child processes that never outlive the driver that started them.

A build runs img2dataset as a child process, and img2dataset starts workers of its own. If the
driver is killed (SIGKILL, the OOM killer, a lost terminal), they would go on downloading into
the output folder, and a rerun would start a second img2dataset next to them. On Linux the child
is started under a small guard (`python -m pipeline.processes PARENT_PID -- CMD...`): the kernel
signals the guard when the driver dies (prctl PR_SET_DEATHSIG, which covers every way a process
can end), and the guard then ends its whole process group, workers included. Elsewhere an atexit
hook stops the child on any orderly exit of the driver.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_DEATHSIG = 1


def _signal_on_parent_death(parent: int) -> None:
    """In a child: SIGTERM when `parent` dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_DEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl: nobody would signal us
        os._exit(1)


def popen_tied(cmd: list[str], **kwargs) -> subprocess.Popen:
    """`subprocess.Popen(cmd, **kwargs)` whose process, and every process it starts, ends when
    this process ends. Call it from the main thread: the death signal follows the thread that
    started the child."""
    if sys.platform.startswith("linux"):
        parent = os.getpid()
        # No preexec_fn (unsafe in a process with threads, as a Ray driver is): the guard asks
        # for the death signal itself, and exits if the driver died before it could.
        cmd = [sys.executable, "-m", "pipeline.processes", str(parent), "--", *cmd]
    proc = subprocess.Popen(cmd, **kwargs)
    atexit.register(_stop, proc)  # an orderly exit stops it at once, on every platform
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _guard(argv: list[str]) -> int:
    """Run CMD in a new process group; when the driver dies (or we are told to stop), end the
    whole group. Exits with CMD's exit code."""
    parent, sep, cmd = int(argv[0]), argv[1], argv[2:]
    if sep != "--" or not cmd:
        print("usage: python -m pipeline.processes PARENT_PID -- CMD...", file=sys.stderr)
        return 2
    os.setsid()  # a group of our own, holding CMD and all it starts
    _signal_on_parent_death(parent)

    def end_group(signum, _frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # killpg reaches us too
        os.killpg(os.getpgrp(), signal.SIGTERM)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, end_group)
    signal.signal(signal.SIGINT, end_group)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
