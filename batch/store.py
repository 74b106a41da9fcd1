"""Job records and results in the jobs Redis (noeviction, AOF): losing a key loses user data.

Layout, all under `surge:job:<id>` and expiring together after the retention time:
  <id>          hash: status, total, chunk_size, chunks, timestamps, model, version, error
  <id>:texts    list of the input texts (chunks read ranges of it; deleted when the job ends)
  <id>:results  hash index -> result JSON; writes are idempotent (a re-run overwrites)
  <id>:done     set of finished chunk numbers: exact progress, never double-counted
Idempotency keys: `surge:idem:<hash of kind, owner, key>` -> "<job id> <body fingerprint>",
claimed in the same script that creates the job (concurrent duplicates make one job), same
retention.
Unfinished jobs: `surge:jobs:active`, a sorted set job id -> creation time, left when a job
ends; the sweeper (batch/sweeper.py) walks it to find chunks the broker lost.
Caller ids: `<id>:ids`, a hash index -> the item's id as JSON (items without one have no
field), written with the texts and kept by the script that creates the job; joined to
results as they are read.
Each owner's jobs: `surge:jobs:owner:<hash of the owner>`, a sorted set job id -> creation
time (epoch s), newest OWNER_INDEX_KEEP only, entries older than the retention time dropped,
the key itself expiring with the newest job; `GET /v1/jobs` reads it.
Outbox: `surge:outbox`, a hash job id -> the job's end event (type, time), written by the
script that ends the job and removed once K_SINK answered 2xx (batch/events.py drains it).
Dead letters: `surge:deadletter`, a list of the newest events the Broker could not deliver
(newest first, each bounded in size by batch/events.py), kept for an operator to inspect and
replay; bounded in count, and entries older than the dead-letter TTL are dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, cast

import redis

from batch import scripts
from common.errors import IdempotencyKeyReused, NotFound

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL = {SUCCEEDED, FAILED, CANCELLED}
DEAD_LETTERS = "surge:deadletter"
ACTIVE = "surge:jobs:active"
# The newest jobs an owner's index keeps (older ones still exist until they expire; they are
# no longer listed). Bounds the index per owner; the retention time bounds it too.
OWNER_INDEX_KEEP = 10_000
OUTBOX = "surge:outbox"
# Texts are written before their job exists (under a fresh id); the script that creates the
# job gives them the job's retention. A creator that dies in between leaves them this long.
PENDING_TEXTS_TTL_S = 600


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


def _key(job_id: str, part: str = "") -> str:
    return f"surge:job:{job_id}" + (f":{part}" if part else "")


def done_key(job_id: str) -> str:
    """The set of a job's finished chunk numbers."""
    return _key(job_id, "done")


def owner_key(owner: str) -> str:
    """The index of an owner's jobs (the owner hashed: a key name holds no client input)."""
    return "surge:jobs:owner:" + hashlib.sha256(owner.encode("utf-8", "surrogatepass")
                                                ).hexdigest()[:32]


def idem_key(kind: str, owner: str, key: str) -> str:
    """The Redis key of a client's idempotency key: scoped by kind (HTTP header or CloudEvent
    source+id) and owner (API key name), so no one claims another's key."""
    return "surge:idem:" + hashlib.sha256(f"{kind}\x00{owner}\x00{key}".encode(
        "utf-8", "surrogatepass")).hexdigest()


def body_fingerprint(texts: list[str], model: str, ids: list[Any] | None = None) -> str:
    """What a replay must repeat to get the first job back: the texts, in order, the model
    and the items' ids (a body without ids keeps the fingerprint it always had)."""
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass") + b"\x00")
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    if ids is not None:
        digest.update(b"\x00ids" + json.dumps(ids).encode())
    return digest.hexdigest()[:32]


class JobStore:
    """Synchronous store (used by the API through a thread and by Celery tasks directly)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int):
        self.redis = client
        self.ttl_s = ttl_s
        self._create = client.register_script(scripts.CREATE)
        self._end = client.register_script(scripts.END)
        self._write = client.register_script(scripts.WRITE_CHUNK)
        self._start = client.register_script(scripts.START)
        self._dead_letter = client.register_script(_DEAD_LETTER)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int) -> JobStore:
        """A store on the Redis at `url`."""
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2,
                                        decode_responses=True), ttl_s=ttl_s)

    def create(self, texts: list[str], *, chunk_size: int, model: str, version: str,
               idempotency_key: str | None = None, owner: str = "", kind: str = "http",
               ids: list[Any] | None = None, listed: bool = False,
               ) -> tuple[dict[str, Any], bool]:
        """A new queued job, or the existing one for this idempotency key (created=False);
        IdempotencyKeyReused when the key named a different body. The items' `ids` count in
        the body and are stored with it; `listed` puts the job on its owner's list."""
        idem = fingerprint = None
        if idempotency_key:
            idem = idem_key(kind, owner, idempotency_key)
            fingerprint = body_fingerprint(texts, model, ids)
            # a redelivery: answered without writing the texts
            if job := self.replay(texts, model=model, idempotency_key=idempotency_key,
                                  owner=owner, kind=kind, ids=ids):
                return job, False
        job_id = new_job_id()
        self._write_texts(job_id, texts, ids)
        meta: dict[str, Any] = {
            "id": job_id, "status": QUEUED, "total": len(texts), "chunk_size": chunk_size,
            "chunks": (len(texts) + chunk_size - 1) // chunk_size, "created_at": _now(),
            "model": model, "version": version, "owner": owner}
        keys = [_key(job_id), _key(job_id, "texts"), _key(job_id, "ids"), ACTIVE,
                owner_key(owner) if listed else "", *([idem] if idem else [])]
        fields = [str(v) for pair in meta.items() for v in pair]
        try:
            winner, held_print = self._create(
                keys=keys, args=[job_id, self.ttl_s, time.time(), fingerprint or "",
                                 OWNER_INDEX_KEEP, *fields])
        except redis.RedisError:
            self._drop_texts(job_id)
            raise
        if winner != job_id:  # a duplicate created it first: ours were never a job
            self._drop_texts(job_id)
            job = self._replay(f"{winner} {held_print}", fingerprint)
            if job is None:  # that job expired this very moment: claim the key again
                return self.create(texts, chunk_size=chunk_size, model=model, version=version,
                                   idempotency_key=idempotency_key, owner=owner, kind=kind,
                                   ids=ids, listed=listed)
            return job, False
        return self.get(job_id) or meta, True

    def replay(self, texts: list[str], *, model: str, idempotency_key: str, owner: str = "",
               kind: str = "http", ids: list[Any] | None = None) -> dict[str, Any] | None:
        """The job this idempotency key already made (None: none yet, or it expired);
        IdempotencyKeyReused when it was made for a different body."""
        held = self.redis.get(idem_key(kind, owner, idempotency_key))
        return self._replay(str(held), body_fingerprint(texts, model, ids)) if held else None

    def _write_texts(self, job_id: str, texts: list[str], ids: list[Any] | None) -> None:
        """The texts and the items' ids (index -> id as JSON; items without one have none),
        under a job id no one knows yet, kept PENDING_TEXTS_TTL_S until the job is created."""
        named = [(str(k), json.dumps(i)) for k, i in enumerate(ids or []) if i is not None]
        with self.redis.pipeline(transaction=True) as pipe:  # all or none (a full Redis)
            for start in range(0, len(texts), 10_000):
                pipe.rpush(_key(job_id, "texts"), *texts[start : start + 10_000])
            for start in range(0, len(named), 10_000):
                pipe.hset(_key(job_id, "ids"), mapping=dict(named[start : start + 10_000]))
            for part in ("texts", "ids"):
                pipe.expire(_key(job_id, part), PENDING_TEXTS_TTL_S)
            pipe.execute()

    def _drop_texts(self, job_id: str) -> None:
        with contextlib.suppress(redis.RedisError):  # else they expire (PENDING_TEXTS_TTL_S)
            self.redis.delete(_key(job_id, "texts"), _key(job_id, "ids"))

    def _replay(self, held: str, fingerprint: str | None) -> dict[str, Any] | None:
        """The job an idempotency key names (None: expired); a different body is refused."""
        job_id, _, first = held.partition(" ")
        if first and fingerprint and first != fingerprint:
            raise IdempotencyKeyReused(
                "this idempotency key was used for a different body (texts, ids or model); "
                "use a new key for a new job", {"job_id": job_id})
        return self.get(job_id)

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

    def require_room(self) -> None:
        """OutOfMemoryError while the jobs Redis is over its maxmemory (writes refused)."""
        memory = cast(dict[str, Any], self.redis.info("memory"))
        limit = int(memory.get("maxmemory", 0))
        if limit and int(memory["used_memory"]) > limit:
            raise redis.OutOfMemoryError("used memory > 'maxmemory'")

    def chunk_done(self, job_id: str, chunk: int) -> bool:
        """Whether this chunk's results are written."""
        return bool(self.redis.sismember(done_key(job_id), str(chunk)))

    def _end_keys(self, job_id: str) -> list[str]:
        return [_key(job_id), _key(job_id, "texts"), ACTIVE, OUTBOX, done_key(job_id)]

    def write_chunk(self, job_id: str, chunk: int, results: dict[int, dict[str, Any]],
                    chunks: int) -> bool | None:
        """Store one chunk's results (idempotent): True for the call that finished the job,
        None when nothing was written because the job had ended (or expired)."""
        pairs = [v for i, r in results.items()
                 for v in (str(i), json.dumps(r, separators=(",", ":")))]
        outcome = int(self._write(keys=[*self._end_keys(job_id), _key(job_id, "results")],
                                  args=[job_id, chunk, chunks, self.ttl_s, _now(), time.time(),
                                        *pairs]))
        return None if outcome < 0 else bool(outcome)

    def finish(self, job_id: str, chunks: int) -> bool:
        """Succeed a job whose chunks are all done (a writer died before it could)."""
        return self._end_job(job_id, SUCCEEDED, need=chunks)

    def fail(self, job_id: str, error: str) -> bool:
        """Mark failed (a chunk gave up after its retries); True if this call ended the job."""
        return self._end_job(job_id, FAILED, error)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job: chunks not yet run are skipped, its texts freed."""
        self.require(job_id)
        self._end_job(job_id, CANCELLED)
        return self.require(job_id)

    def _end_job(self, job_id: str, status: str, error: str = "",
                 need: int | None = None) -> bool:
        return bool(self._end(keys=self._end_keys(job_id),
                              args=[job_id, status, _now(), time.time(), error,
                                    "" if need is None else need]))

    def outbox(self, limit: int = 100) -> dict[str, dict[str, Any]]:
        """End events not yet delivered: job id -> {type, at} (at most about `limit`)."""
        _, entries = self.redis.hscan(OUTBOX, 0, count=limit)
        return {str(job): json.loads(raw)
                for job, raw in cast(dict[str, str], entries).items()}

    def outbox_entry(self, job_id: str) -> dict[str, Any] | None:
        """This job's undelivered end event, if any."""
        raw = self.redis.hget(OUTBOX, job_id)
        return json.loads(raw) if raw else None

    def event_delivered(self, job_id: str) -> None:
        """K_SINK took the job's end event: out of the outbox."""
        self.redis.hdel(OUTBOX, job_id)

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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a Redis error is a write refused at maxmemory (noeviction), however it came
    (a command, a MULTI's EXECABORT, a script)."""
    return isinstance(exc, redis.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc))


def new_job_id() -> str:
    """An unguessable job id (the id is the capability to read the job): 16 random bytes,
    URL-safe base64, never starting with "-". One id in 64 did, and a command line then read
    it as an option (`ssc wait -u78H...`: "unrecognized arguments"; argparse, getopt and most
    CLIs alike). Redrawing those costs 0.02 of a bit of the 128."""
    while (job_id := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return job_id


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
