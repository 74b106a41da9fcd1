"""Job records and results in the jobs Redis (noeviction, AOF): losing a key loses user data.

Layout, all under `surge:job:<id>` and expiring together after the retention time:
  <id>          hash: status, total, chunk_size, chunks, timestamps, model, version, error
  <id>:texts    list of the input texts (chunks read ranges of it)
  <id>:results  hash index -> result JSON; writes are idempotent (a re-run overwrites)
  <id>:done     set of finished chunk numbers: exact progress, never double-counted
Idempotency keys: `surge:idem:<hash>` -> job id, SET NX, same retention.
Unfinished jobs: `surge:jobs:active`, a sorted set job id -> creation time, left when a job
ends; the sweeper (batch/sweeper.py) walks it to find chunks the broker lost.
Caller ids: `<id>:ids`, a hash index -> the item's id as JSON (items without one have no
field), written beside the job (idempotent) and joined to results as they are read.
Each owner's jobs: `surge:jobs:owner:<hash of the owner>`, a sorted set job id -> creation
time (epoch s), newest OWNER_INDEX_KEEP only, entries older than the retention time dropped,
the key itself expiring with the newest job; `GET /v1/jobs` reads it.
Dead letters: `surge:deadletter`, a list of the newest events the Broker could not deliver
(newest first, each bounded in size by batch/events.py), kept for an operator to inspect and
replay; bounded in count, and entries older than the dead-letter TTL are dropped.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, cast

import redis

from common.errors import NotFound

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL = {SUCCEEDED, FAILED, CANCELLED}
DEAD_LETTERS = "surge:deadletter"
ACTIVE = "surge:jobs:active"
# The newest jobs an owner's index keeps (older ones still exist until they expire; they are
# no longer listed). Bounds the index per owner; the retention time bounds it too.
OWNER_INDEX_KEEP = 10_000

# The last chunk to finish flips the job to succeeded, exactly once (its caller emits the event).
_FINISH = """
if redis.call('SCARD', KEYS[2]) < tonumber(ARGV[1]) then return 0 end
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'status', 'succeeded')
end
redis.call('ZREM', KEYS[3], ARGV[3])
return 1
"""

# KEYS[1] the dead-letter list; ARGV record, keep, ttl_s, now. Newest first: entries past
# their TTL sit at the tail (a few are dropped per call, so the call stays short).
_DEAD_LETTER = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local oldest = tonumber(ARGV[4]) - tonumber(ARGV[3])
for _ = 1, 16 do
  local last = redis.call('LINDEX', KEYS[1], -1)
  local ok, entry = pcall(cjson.decode, last or '')
  local ts = ok and type(entry) == 'table' and tonumber(entry['received_ts'])
  if not ts or ts >= oldest then break end
  redis.call('RPOP', KEYS[1])
end
return redis.call('LLEN', KEYS[1])
"""

_START = """
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'version', ARGV[3])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
end
return 0
"""


def _key(job_id: str, part: str = "") -> str:
    return f"surge:job:{job_id}" + (f":{part}" if part else "")


def done_key(job_id: str) -> str:
    """The set of a job's finished chunk numbers."""
    return _key(job_id, "done")


def owner_key(owner: str) -> str:
    """The index of an owner's jobs (the owner hashed: a key name holds no client input)."""
    return "surge:jobs:owner:" + hashlib.sha256(owner.encode("utf-8", "surrogatepass")
                                                ).hexdigest()[:32]


class JobStore:
    """Synchronous store (used by the API through a thread and by Celery tasks directly)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int):
        self.redis = client
        self.ttl_s = ttl_s
        self._finish = client.register_script(_FINISH)
        self._start = client.register_script(_START)
        self._dead_letter = client.register_script(_DEAD_LETTER)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int) -> JobStore:
        """A store on the Redis at `url`."""
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2,
                                        decode_responses=True), ttl_s=ttl_s)

    def create(self, texts: list[str], *, chunk_size: int, model: str, version: str,
               idempotency_key: str | None = None, owner: str = "",
               ) -> tuple[dict[str, Any], bool]:
        """A new queued job, or the existing one for this idempotency key (created=False)."""
        job_id = secrets.token_urlsafe(16)  # unguessable: the id is the capability to read
        idem = None
        if idempotency_key:
            # per owner: another key's Idempotency-Key never returns this key's job
            scoped = f"{owner}\x00{idempotency_key}" if owner else idempotency_key
            idem = "surge:idem:" + hashlib.sha256(scoped.encode()).hexdigest()
            if not self.redis.set(idem, job_id, nx=True, ex=self.ttl_s):
                existing = self.redis.get(idem)
                if existing and (job := self.get(str(existing))):
                    return job, False
                self.redis.set(idem, job_id, ex=self.ttl_s)  # stale key: its job expired
        chunks = (len(texts) + chunk_size - 1) // chunk_size
        meta: dict[Any, Any] = {
            "id": job_id, "status": QUEUED, "total": len(texts), "chunk_size": chunk_size,
            "chunks": chunks, "created_at": _now(), "model": model, "version": version,
            "owner": owner}
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(_key(job_id), mapping=meta)
                for start in range(0, len(texts), 10_000):
                    pipe.rpush(_key(job_id, "texts"), *texts[start : start + 10_000])
                for part in ("", "texts"):
                    pipe.expire(_key(job_id, part), self.ttl_s)
                pipe.zadd(ACTIVE, {job_id: time.time()})
                pipe.execute()
        except redis.RedisError:
            if idem:
                self.redis.delete(idem)
            raise
        return self.get(job_id) or meta, True

    def get(self, job_id: str) -> dict[str, Any] | None:
        """Status with exact progress, or None when unknown or expired."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(_key(job_id))
            pipe.hlen(_key(job_id, "results"))
            meta, done = pipe.execute()
        if not meta:
            return None
        for field in ("total", "chunk_size", "chunks"):
            meta[field] = int(meta[field])
        meta["done"] = int(done)
        return dict(meta)

    def many(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        """Like get, for many jobs in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(_key(job_id))
                pipe.hlen(_key(job_id, "results"))
            replies = pipe.execute()
        out: list[dict[str, Any] | None] = []
        for k in range(len(job_ids)):
            meta, done = replies[2 * k], replies[2 * k + 1]
            if meta:
                for field in ("total", "chunk_size", "chunks"):
                    meta[field] = int(meta[field])
            out.append(dict(meta) | {"done": int(done)} if meta else None)
        return out

    def require(self, job_id: str) -> dict[str, Any]:
        """Like get, but NotFound (404) for an unknown job."""
        job = self.get(job_id)
        if job is None:
            raise NotFound("no such job (unknown id, or its results expired)", {"id": job_id})
        return job

    def chunk_texts(self, job_id: str, chunk: int, chunk_size: int) -> list[str]:
        """The texts of one chunk."""
        start = chunk * chunk_size
        return [str(t) for t in self.redis.lrange(_key(job_id, "texts"), start,
                                                  start + chunk_size - 1)]

    def mark_running(self, job_id: str, model: str, version: str) -> None:
        """A chunk started: queued -> running, atomically (never undoes cancelled or final);
        records the model that actually computes the results."""
        self._start(keys=[_key(job_id)], args=[_now(), model, version])

    def status(self, job_id: str) -> str | None:
        """The status field alone."""
        value = self.redis.hget(_key(job_id), "status")
        return str(value) if value is not None else None

    def write_chunk(self, job_id: str, chunk: int, results: dict[int, dict[str, Any]],
                    chunks: int) -> bool:
        """Store one chunk's results (idempotent); True for the call that finished the job."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(job_id, "results"),
                      mapping={str(i): json.dumps(r, separators=(",", ":"))
                               for i, r in results.items()})
            pipe.sadd(done_key(job_id), chunk)
            for part in ("results", "done"):
                pipe.expire(_key(job_id, part), self.ttl_s)
            pipe.execute()
        return bool(self._finish(keys=[_key(job_id), done_key(job_id), ACTIVE],
                                 args=[chunks, _now(), job_id]))

    def fail(self, job_id: str, error: str) -> bool:
        """Mark failed (a chunk gave up after its retries); True if this call ended the job."""
        if not self.redis.hsetnx(_key(job_id), "finished_at", _now()):
            return False
        self.redis.hset(_key(job_id), mapping={"status": FAILED, "error": error})
        self.redis.zrem(ACTIVE, job_id)
        return True

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; chunks not yet run are skipped."""
        job = self.require(job_id)
        if job["status"] not in FINAL and self.redis.hsetnx(_key(job_id), "finished_at",
                                                           _now()):
            self.redis.hset(_key(job_id), "status", CANCELLED)
            self.redis.zrem(ACTIVE, job_id)
        return self.require(job_id)

    def active(self) -> dict[str, float]:
        """Unfinished jobs -> creation time (epoch seconds)."""
        pairs = cast(list[tuple[str, float]], self.redis.zrange(ACTIVE, 0, -1, withscores=True))
        return {str(job): float(at) for job, at in pairs}

    def forget(self, job_ids: list[str]) -> None:
        """Take jobs that ended or expired off the unfinished index."""
        if job_ids:
            self.redis.zrem(ACTIVE, *job_ids)

    def progress(self, job_ids: list[str]) -> dict[str, tuple[str | None, int, int]]:
        """Per job: status (None once expired), chunks, chunks done; one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(_key(job_id), "status", "chunks")
                pipe.scard(done_key(job_id))
            replies = pipe.execute()
        out = {}
        for k, job_id in enumerate(job_ids):
            status, chunks = replies[2 * k]
            out[job_id] = (status, int(chunks or 0), int(replies[2 * k + 1]))
        return out

    def results(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """Results for indices offset..offset+limit-1 that exist, in index order, each with
        its item's id (None when it has none)."""
        fields = [str(i) for i in range(offset, offset + limit)]
        if not fields:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(_key(job_id, "results"), fields)
            pipe.hmget(_key(job_id, "ids"), fields)
            raw, ids = pipe.execute()
        return [{"index": offset + k, "id": json.loads(i) if i else None} | json.loads(r)
                for k, (r, i) in enumerate(zip(raw, ids, strict=True)) if r]

    def write_ids(self, job_id: str, ids: list[Any]) -> None:
        """Store the items' ids (None: no id); idempotent. They expire with the job."""
        pairs = {str(k): json.dumps(i) for k, i in enumerate(ids) if i is not None}
        items = list(pairs.items())
        with self.redis.pipeline(transaction=True) as pipe:
            for start in range(0, len(items), 10_000):
                pipe.hset(_key(job_id, "ids"), mapping=dict(items[start : start + 10_000]))
            pipe.expire(_key(job_id, "ids"), self.ttl_s)
            pipe.execute()

    def has_ids(self, job_id: str) -> bool:
        """Whether the job's ids were written."""
        return bool(self.redis.exists(_key(job_id, "ids")))

    def index_owner(self, owner: str, job_id: str, created: float) -> None:
        """List the job among its owner's (idempotent: a replay keeps its first time)."""
        key = owner_key(owner)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {job_id: created}, nx=True)
            pipe.zremrangebyscore(key, "-inf", f"({time.time() - self.ttl_s}")
            pipe.zremrangebyrank(key, 0, -OWNER_INDEX_KEEP - 1)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def owned(self, owner: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the owner's jobs, newest first, and how many the index holds."""
        key = owner_key(owner)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", f"({time.time() - self.ttl_s}")
            pipe.zrevrange(key, offset, offset + limit - 1)
            pipe.zcard(key)
            _, page, count = pipe.execute()
        jobs = self.many([str(job_id) for job_id in page])
        gone = [str(j) for j, job in zip(page, jobs, strict=True) if job is None]
        if gone:  # expired early (or deleted): off the index
            self.redis.zrem(key, *gone)
        return [job for job in jobs if job is not None], int(count)

    def iter_results(self, job_id: str, total: int, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every stored result in index order (for streaming)."""
        for offset in range(0, total, page):
            yield from self.results(job_id, offset, min(page, total - offset))

    def add_dead_letter(self, encoded: str, *, keep: int, ttl_s: int) -> None:
        """Keep an undeliverable event (JSON, newest first): at most `keep`, for `ttl_s`."""
        self._dead_letter(keys=[DEAD_LETTERS], args=[encoded, keep, ttl_s, time.time()])

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest undeliverable events."""
        return [json.loads(r) for r in self.redis.lrange(DEAD_LETTERS, 0, limit - 1)]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
