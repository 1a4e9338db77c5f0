"""Child processes that must not outlive a Ctrl-C: pass it on, give them time, then end them.

``schedy run`` (one training command) and ``run_workers`` / ``schedy worker``
(N worker processes) face the same problem. The Ctrl-C must reach each child
exactly once: once, so that its ``with job:`` ends the job CRASHED instead of
leaving it RUNNING; not twice, because a second SIGINT could cut short the put
that records it. Recording it takes a moment, so children get a grace period;
one that lingers past it is ended rather than orphaned. Both callers use this
one implementation so the two launchers cannot drift apart.

A leaf module: it knows processes, not jobs or stores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any, TypeAlias

__all__ = [
    "GRACE_SECONDS",
    "Child",
    "alive",
    "describe_exit",
    "exit_code",
    "stop",
    "wait",
]

#: Seconds children get to finish cleanly after Ctrl-C before they are ended.
GRACE_SECONDS = 30.0
#: Seconds a child gets after SIGTERM (past the grace period) before SIGKILL.
TERMINATE_SECONDS = 5.0

#: A command (``subprocess.Popen``) or a Python function (``multiprocessing``) child.
Child: TypeAlias = "subprocess.Popen[Any] | BaseProcess"
#: Where the output of a child whose stdout is our pipe goes while it stops.
Output: TypeAlias = Callable[[bytes], None]


def alive(child: Child) -> bool:
    """Whether ``child`` still runs (reaping it if it just ended)."""
    if isinstance(child, subprocess.Popen):
        return child.poll() is None
    return child.is_alive()


def wait(child: Child, timeout: float | None) -> None:
    """Wait up to ``timeout`` seconds (None: as long as it takes) for ``child`` to end."""
    if isinstance(child, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=timeout)
    else:
        child.join(timeout)


def exit_code(child: Child) -> int:
    """The exit status of an ended child (negative: the signal that killed it); 1 if unknown."""
    code = child.returncode if isinstance(child, subprocess.Popen) else child.exitcode
    return 1 if code is None else int(code)


def describe_exit(returncode: int) -> str:
    """``exited with status 3``, ``was killed by SIGKILL``: how a child ended, for a message."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _terminal_interrupts_our_group() -> bool:
    """Whether a Ctrl-C typed in our terminal reaches our process group (the foreground one)."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (OSError, AttributeError):
            return False
    return False


def _reached_by_terminal(child: Child) -> bool:
    """Whether a Ctrl-C typed in our terminal already reached ``child`` as it reached us.

    The terminal signals its whole foreground process group: a child in our
    group (``schedy run``'s command) got it too; a child in a group of its own
    (workers) did not, and must get it from us.
    """
    if child.pid is None:
        return False
    try:
        in_our_group = os.getpgid(child.pid) == os.getpgrp()
    except (OSError, AttributeError):  # gone already; or no process groups here
        return False
    return in_our_group and _terminal_interrupts_our_group()


def _interrupt(child: Child) -> None:
    """Send SIGINT to ``child`` unless it has ended or the terminal already sent it."""
    if child.pid is not None and alive(child) and not _reached_by_terminal(child):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGINT)


def _settle(child: Child, timeout: float, output: Output | None) -> None:
    """Wait up to ``timeout`` for ``child``; read its piped stdout meanwhile and pass it on.

    Reading matters: a child blocked on a full pipe could never finish cleaning up.
    """
    if output is None or not isinstance(child, subprocess.Popen) or child.stdout is None:
        wait(child, timeout)
        return
    try:
        # A timed-out communicate keeps what it read; the next call returns it all.
        rest, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return
    output(rest or b"")


def _kill(children: Sequence[Child]) -> None:
    for child in children:
        if alive(child):
            child.kill()
            # Only wait: reading the pipe on could hang on a grandchild that holds it.
            wait(child, None)


def stop(children: Sequence[Child], grace: float, output: Output | None = None) -> None:
    """Stop ``children`` after a Ctrl-C: SIGINT each once, then give them all ``grace`` seconds.

    Those still running after it get SIGTERM, then SIGKILL after another
    :data:`TERMINATE_SECONDS`. A second Ctrl-C meanwhile kills them at once
    and is raised again. ``output`` receives what a child with a piped stdout
    prints while it stops.
    """
    for child in children:
        _interrupt(child)
    try:
        deadline = time.monotonic() + grace
        for child in children:
            _settle(child, max(deadline - time.monotonic(), 0.0), output)
        lingering = [child for child in children if alive(child)]
        for child in lingering:
            child.terminate()
        deadline = time.monotonic() + TERMINATE_SECONDS
        for child in lingering:
            _settle(child, max(deadline - time.monotonic(), 0.0), output)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now
        _kill(children)
        raise
    _kill(children)
