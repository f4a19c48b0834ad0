"""Parse a configuration in a child process, so a reload never slows relaying.

Parsing 10,000 services is seconds of pure-Python work that creates millions of objects: in a
thread it holds the GIL and triggers full garbage collections that pause the event loop for
tens of milliseconds each. A child process shares neither. The child returns the `Attempt`
pickled (the model is frozen dataclasses); the daemon unpickles it off the loop.

The child is bounded: it is killed past a deadline, and its address space is capped, so no
input (however hostile) can stall the daemon or exhaust the host's memory. A crash becomes a
config error naming the files.

Run as `python -m lbd.config_process PATH...`: writes the pickled Attempt to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import resource
import signal
import sys
from collections.abc import Sequence

import structlog

from lbd.config import Attempt, ConfigError, attempt

# The child's address space: a 10,000-service config peaks under 400 MiB; 4 GiB is headroom,
# far below what would push a host into swap or the OOM killer.
CHILD_ADDRESS_SPACE = 4 * 1024**3
# Parsing is background work: on a busy host the relaying daemon gets the CPU first.
CHILD_NICE = 10


async def attempt_in_child(paths: Sequence[str], timeout: float) -> Attempt:
    """`attempt(paths)` in a child process; never raises for what the child does."""
    named = ", ".join(paths)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lbd.config_process", *paths,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        return Attempt(None, (ConfigError(named, f"parsing took longer than {timeout:g} s and was stopped"),))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        return Attempt(None, (ConfigError(named, f"the config parser failed ({_exit_reason(proc.returncode)}): "
                                                 f"{_last_line(err)}"),))
    try:
        result = await asyncio.to_thread(pickle.loads, out)  # our own child's output: trusted
    except Exception as exc:  # a truncated pipe, say
        return Attempt(None, (ConfigError(named, f"the config parser's answer was unreadable: {exc}"),))
    if not isinstance(result, Attempt):
        return Attempt(None, (ConfigError(named, "the config parser answered something else than a result"),))
    return result


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _last_line(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def main(argv: Sequence[str]) -> int:
    # stdout carries the answer alone: anything else printed (a log line) goes to stderr.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
    )
    with contextlib.suppress(ValueError, OSError):  # not every platform lets us lower it
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    result = attempt(list(argv))
    with answer:
        answer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
