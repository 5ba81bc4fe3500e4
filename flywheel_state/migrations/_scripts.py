"""Lua scripts of the migration runner: the per-key rewrite, the lock, and the commit of a step."""

from __future__ import annotations

from typing import Final

__all__ = ["COMMIT_SCRIPT", "JSON_TYPE", "RELEASE_SCRIPT", "RENEW_SCRIPT", "REWRITE_SCRIPT"]

JSON_TYPE: Final = "ReJSON-RL"
"""What TYPE answers for a RedisJSON document."""

# Rewrites one key from one type to another, keeping its remaining TTL, atomically, and only if
# the key still holds exactly what the runner read (its SHA1): a key rewritten already, changed
# by a writer, deleted or expired in between is left alone and reported as such.
#
# KEYS[1] the key; KEYS[2] the checkpoint hash; KEYS[3] the step's problem list. The rewrite
# counter (ARGV[5]) and the key's problems (ARGV[6], a JSON array, counted in ARGV[7] by ARGV[8])
# are recorded with the rewrite itself, so they survive a runner killed between a batch's writes
# and its checkpoint.
# ARGV: from type ('string' | 'ReJSON-RL'), SHA1 of the value read, new value, to type, counter
# field, problems JSON ('' for none), problem counter field, number of problems.
# Reply: {'ok'} | {'gone'} | {'skip'} (not the from type any more) | {'changed'} | {'error', msg}.
# Redis does not roll back a script that fails halfway, so a failed write restores the old value.
REWRITE_SCRIPT = r"""
local key = KEYS[1]
local from_type, digest, value, to_type = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local t = redis.call('TYPE', key)['ok']
if t == 'none' then return {'gone'} end
if t ~= from_type then return {'skip'} end
local current
if from_type == 'string' then
  current = redis.call('GET', key)
else
  current = redis.call('JSON.GET', key)
end
if redis.sha1hex(current) ~= digest then return {'changed'} end
local pttl = redis.call('PTTL', key)
if from_type ~= to_type then redis.call('DEL', key) end
local res
if to_type == 'string' then
  res = redis.pcall('SET', key, value)
else
  res = redis.pcall('JSON.SET', key, '$', value)
end
if type(res) == 'table' and res.err then
  if from_type ~= to_type then
    if from_type == 'string' then
      redis.call('SET', key, current)
    else
      redis.call('JSON.SET', key, '$', current)
    end
  end
  if pttl > 0 then redis.call('PEXPIRE', key, pttl) end
  return {'error', res.err}
end
if pttl > 0 then redis.call('PEXPIRE', key, pttl) end
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
if ARGV[6] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[6])
  redis.call('HINCRBY', KEYS[2], ARGV[7], tonumber(ARGV[8]))
end
return {'ok'}
"""

# KEYS[1] lock; ARGV[1] our lock value, ARGV[2] new TTL in ms. 1 when still ours and renewed.
RENEW_SCRIPT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lock; ARGV[1] our lock value. Deletes the lock only if it is still ours.
RELEASE_SCRIPT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Records a finished step (or a stamp) in one atomic step, only while the lock is ours.
# KEYS: lock, revision, applied (hash), log (list), then keys to delete (checkpoints, marker).
# ARGV: lock value, new revision ('' = base), log record, log cap, n, n applied fields to
# delete, m, m pairs (field, record) to set in the applied hash.
COMMIT_SCRIPT = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
local i = 5
local n = tonumber(ARGV[i])
for j = 1, n do redis.call('HDEL', KEYS[3], ARGV[i + j]) end
i = i + n + 1
local m = tonumber(ARGV[i])
for j = 1, m do
  redis.call('HSET', KEYS[3], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
end
for k = 5, #KEYS do redis.call('DEL', KEYS[k]) end
return 1
"""
