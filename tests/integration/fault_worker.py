"""`python -m tests.integration.fault_worker`: a real `surgeserve worker` with a fault injected
at an exact moment, for the fault tests (test code: the shipped worker has no such hooks).

FAULT (environment), comma-separated:
  kill-after-final-write   SIGKILL this process right after the write that ended a job, before
                           its end event is sent and its message acknowledged
  slow-chunk=N:S           chunk N sleeps S seconds before its write (a legitimately slow chunk)
  full-at-ack=N            after chunk N's write, the jobs Redis is made full (maxmemory 1) and
                           the chunk returns at once, so kombu's acknowledgement meets a full
                           Redis; the test frees it later
Every chunk run is counted in the jobs Redis (INCR test:runs:<job>:<chunk>), and the chunk
running now is in test:holding:<pid>.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from batch.runner import ChunkOutcome, ChunkRunner
from batch.store import JobStore


def runs_key(job_id: str, chunk: int) -> str:
    """Where the runs of a chunk are counted."""
    return f"test:runs:{job_id}:{chunk}"


def holding_key(pid: int) -> str:
    """The chunk the worker process `pid` is running now, if any."""
    return f"test:holding:{pid}"


def faults() -> dict[str, str]:
    """FAULT as {name: argument}."""
    spec = os.environ.get("FAULT", "")
    pairs = (part.partition("=") for part in spec.split(",") if part)
    return {name: argument for name, _, argument in pairs}


def install(found: dict[str, str]) -> None:
    """Patch the seams: ChunkRunner.run (counting) and JobStore.write_chunk (the faults)."""
    run, write_chunk = ChunkRunner.run, JobStore.write_chunk
    slow_chunk, slow_s = (found["slow-chunk"].split(":") if "slow-chunk" in found
                          else ("-1", "0"))
    full_chunk = int(found.get("full-at-ack", "-1"))

    def counted_run(self: ChunkRunner, job_id: str, chunk: int) -> ChunkOutcome:
        self.store.redis.incr(runs_key(job_id, chunk))
        self.store.redis.set(holding_key(os.getpid()), chunk)
        try:
            return run(self, job_id, chunk)
        finally:
            self.store.redis.delete(holding_key(os.getpid()))

    def faulty_write(self: JobStore, job_id: str, chunk: int, results: dict[int, Any],
                     chunks: int) -> Any:
        if chunk == int(slow_chunk):
            time.sleep(float(slow_s))
        written = write_chunk(self, job_id, chunk, results, chunks)
        if chunk == full_chunk and not self.redis.exists("test:full-done"):
            self.redis.set("test:full-done", 1)
            self.redis.config_set("maxmemory", 1)
            # the runner's wait for room before returning is skipped: the ack meets it
            self.require_room = lambda: None  # type: ignore[method-assign]
        if written and "kill-after-final-write" in found:
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    ChunkRunner.run = counted_run  # type: ignore[method-assign]
    JobStore.write_chunk = faulty_write  # type: ignore[method-assign]


if __name__ == "__main__":
    install(faults())
    from online.cli import main

    sys.exit(main(["worker"]))
