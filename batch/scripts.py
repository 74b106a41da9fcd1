"""The job store's Lua scripts: each state change that must be atomic is one script.

Redis runs a script whole or not at all, and refuses its first memory-growing write when the
server is over `maxmemory` (noeviction); writes after a first one go through. So a script that
must work on a full Redis (ending a job frees its texts) deletes first.
"""

from __future__ import annotations

# The claim of an idempotency key and the job it names, created together: a concurrent
# duplicate finds either nothing (and creates) or the finished claim and its job (and returns
# them). A key whose job expired is taken over. The texts and the items' ids were written
# before (under the new id, briefly kept): here they get the job's retention, and the job goes
# on its owner's list (newest OWNER_INDEX_KEEP kept), all in the same step.
# KEYS: job hash, texts, ids, active index, owner index ('' for none)[, idempotency key]
# ARGV: job id, ttl, score (creation time), body fingerprint, owner index bound,
#       job fields (name, value)...
CREATE = """
if #KEYS == 6 then
  local held = redis.call('GET', KEYS[6])
  if held then
    local sep = string.find(held, ' ', 1, true)
    local id = sep and string.sub(held, 1, sep - 1) or held
    if redis.call('EXISTS', 'surge:job:' .. id) == 1 then
      return {id, sep and string.sub(held, sep + 1) or ''}
    end
  end
  redis.call('SET', KEYS[6], ARGV[1] .. ' ' .. ARGV[4], 'EX', ARGV[2])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
if KEYS[5] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -tonumber(ARGV[5]) - 1)
  redis.call('EXPIRE', KEYS[5], ARGV[2])
end
return {ARGV[1], ARGV[4]}
"""

# The end of a job, one transition per job: status, finish time, texts freed, index left, and
# its end event in the outbox (sent until K_SINK takes it), all at once: a worker killed right
# after this still has its event sent by another.
# KEYS: job hash, texts, active index, outbox, done set; ARGV: job id, status, ISO time,
# epoch time, error ('' for none), chunks that must be done first ('' for none).
_END_FUNCTION = """
local function ended(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled'
end
local function finish(id, status, iso, epoch, err)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', iso)
  if err ~= '' then redis.call('HSET', KEYS[1], 'error', err) end
  redis.call('ZREM', KEYS[3], id)
  redis.call('HSET', KEYS[4], id, cjson.encode({type = status, at = tonumber(epoch)}))
  return 1
end
"""

END = _END_FUNCTION + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or ended(status) then return 0 end
if ARGV[6] ~= '' and redis.call('SCARD', KEYS[5]) < tonumber(ARGV[6]) then return 0 end
return finish(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

# One chunk's results, its done mark and, when it was the last, the job's end: -1 nothing
# written (the job ended or expired), 0 written, 1 written and the job succeeded.
# KEYS: as END; then results hash. ARGV: job id, chunk, chunks, ttl, ISO time, epoch time,
# results (index, JSON)...
WRITE_CHUNK = _END_FUNCTION + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or ended(status) then return -1 end
for i = 7, #ARGV, 500 do
  redis.call('HSET', KEYS[6], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('EXPIRE', KEYS[6], ARGV[4])
if redis.call('SCARD', KEYS[5]) < tonumber(ARGV[3]) then return 0 end
return finish(ARGV[1], 'succeeded', ARGV[5], ARGV[6], '')
"""

# A chunk started: queued -> running (never undoes an end); records the model in use.
START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'version', ARGV[3])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
end
return 0
"""
