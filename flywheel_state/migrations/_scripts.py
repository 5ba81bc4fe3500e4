"""Lua scripts of the migration runner: the per-key rewrite, the lock, and the commit of a step."""

from __future__ import annotations

from typing import Final

__all__ = [
    "CHECKPOINT_SCRIPT",
    "COMMIT_SCRIPT",
    "JSON_TYPE",
    "KEYS_PER_SCRIPT",
    "RELEASE_SCRIPT",
    "RENEW_SCRIPT",
    "REWRITE_SCRIPT",
]

JSON_TYPE: Final = "ReJSON-RL"
"""What TYPE answers for a RedisJSON document."""

KEYS_PER_SCRIPT = 50
"""Keys one call of :data:`REWRITE_SCRIPT` rewrites (it runs atomically, so this bounds the time
other clients wait: about a millisecond)."""

# Rewrites keys from one type to another, each keeping its remaining TTL, atomically, and only if
# the key still holds exactly what the runner read: a key rewritten already, changed by a writer,
# deleted or expired in between is left alone and reported as such. The value read is sent back
# and compared whole (a string comparison: cheaper on the server than hashing it, and exact).
#
# KEYS[1] the checkpoint hash; KEYS[2] the step's problem list; KEYS[3..] the keys to rewrite.
# On a Redis Cluster a call holds one key only (KEYS[1] is the key to rewrite, in its own slot):
# the counters and problems are then left to the runner's checkpoint.
# ARGV[1] from type ('string' | 'ReJSON-RL'); ARGV[2] to type; ARGV[3] the checkpoint's rewrite
# counter field; ARGV[4] its problem counter field; then three per key: the value read; the
# key's problems as "<count>|<JSON array>" ('' for none); and the new value.
# The counters and problems are recorded with the rewrites themselves, so they survive a runner
# killed between a batch's writes and its checkpoint.
# Reply: one status per key: 'ok', 'gone', 'skip' (not the from type any more), 'changed', or
# 'error:<message>'. Redis does not roll back a script that fails halfway, so each write is done
# with pcall and a failed one restores the old value.
REWRITE_SCRIPT = r"""
local from_type, to_type = ARGV[1], ARGV[2]
local out = {}
local ok = 0
local first = 3
if #KEYS == 1 then first = 1 end
for i = first, #KEYS do
  local key = KEYS[i]
  local a = 5 + (i - first) * 3
  local status = 'ok'
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then
    status = 'gone'
  elseif t ~= from_type then
    status = 'skip'
  else
    local current
    if from_type == 'string' then
      current = redis.call('GET', key)
    else
      current = redis.call('JSON.GET', key)
    end
    if current ~= ARGV[a] then
      status = 'changed'
    else
      local pttl = redis.call('PTTL', key)
      if from_type ~= to_type then redis.call('DEL', key) end
      local res
      if to_type == 'string' then
        res = redis.pcall('SET', key, ARGV[a + 2])
      else
        res = redis.pcall('JSON.SET', key, '$', ARGV[a + 2])
      end
      if type(res) == 'table' and res.err then
        if from_type ~= to_type then
          if from_type == 'string' then
            redis.call('SET', key, current)
          else
            redis.call('JSON.SET', key, '$', current)
          end
        end
        status = 'error:' .. res.err
      else
        ok = ok + 1
        local problems = ARGV[a + 1]
        if problems ~= '' and first == 3 then
          local bar = string.find(problems, '|', 1, true)
          redis.call('RPUSH', KEYS[2], string.sub(problems, bar + 1))
          redis.call('HINCRBY', KEYS[1], ARGV[4], tonumber(string.sub(problems, 1, bar - 1)))
        end
      end
      if pttl > 0 then redis.call('PEXPIRE', key, pttl) end
    end
  end
  out[#out + 1] = status
end
if ok > 0 and first == 3 then redis.call('HINCRBY', KEYS[1], ARGV[3], ok) end
return out
"""

# Saves a rewrite's checkpoint atomically where MULTI is not available (a Redis Cluster: both
# keys share the namespace's hash tag). KEYS[1] checkpoint hash, KEYS[2] problem list.
# ARGV: field prefix, cursor ('' = keep cursor and pass: counters only), pass, scanned,
# changed, done (0/1), problem count, problems JSON.
CHECKPOINT_SCRIPT = r"""
local f = ARGV[1]
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], f .. 'cursor', ARGV[2], f .. 'pass', ARGV[3]) end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], f .. 'done', 1) end
redis.call('HINCRBY', KEYS[1], f .. 'scanned', ARGV[4])
if tonumber(ARGV[5]) > 0 then redis.call('HINCRBY', KEYS[1], f .. 'changed', ARGV[5]) end
if tonumber(ARGV[7]) > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[8])
  redis.call('HINCRBY', KEYS[1], f .. 'problems', ARGV[7])
end
return 1
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
