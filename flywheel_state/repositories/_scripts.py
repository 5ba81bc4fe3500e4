"""The Lua script behind every write: data, version and TTL change in one atomic step.

One script serves full writes (``save`` / ``insert``) and partial writes (``update``, ``touch``,
``append_history``). It checks the key's type (a legacy string value is never overwritten), the
stored version (optimistic concurrency), and for partial writes that the key still exists (a
partial write never resurrects an expired or deleted key) and that every path has the JSON type
the operation needs, before it writes anything: Redis does not roll back a script that fails
halfway, so all checks come first.

Reply: ``{status, number}`` where status is ``ok`` (number = new version), ``corrupt`` (number
unused; a third element names the key's type), ``exists``, ``missing``, ``conflict`` (number =
stored version) or ``badpath`` (a third element names the path).
"""

from __future__ import annotations

__all__ = ["WRITE_SCRIPT"]

WRITE_SCRIPT = r"""
local key = KEYS[1]
local mode = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local expected = ARGV[3]

local ktype = redis.call('TYPE', key)['ok']
local exists = ktype ~= 'none'
if exists and ktype ~= 'ReJSON-RL' then
  return {'corrupt', 0, ktype}
end
if mode == 'insert' and exists then
  return {'exists', 0}
end
if mode == 'patch' and not exists then
  return {'missing', 0}
end

local current = 0
if exists then
  local raw = redis.call('JSON.GET', key, '$.version')
  local n = raw and string.match(raw, '^%[(%-?%d+)')
  if n then current = tonumber(n) end
end
if expected ~= '' and tonumber(expected) ~= current then
  return {'conflict', current}
end

local nops = 0
if mode == 'patch' then
  nops = tonumber(ARGV[4])
  local i = 5
  for _ = 1, nops do
    local op, path = ARGV[i], ARGV[i + 1]
    i = i + 3
    if op ~= 'set' then
      local t = redis.call('JSON.TYPE', key, path)
      t = t and t[1]
      if (op == 'append' or op == 'keeplast') and t ~= 'array' then
        return {'badpath', 0, path}
      end
      if op == 'incr' and t ~= 'integer' and t ~= 'number' then
        return {'badpath', 0, path}
      end
    end
  end
end

local new = current + 1
if mode == 'patch' then
  local i = 5
  for _ = 1, nops do
    local op, path, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    if op == 'set' then
      redis.call('JSON.SET', key, path, value)
    elseif op == 'append' then
      redis.call('JSON.ARRAPPEND', key, path, value)
    elseif op == 'incr' then
      redis.call('JSON.NUMINCRBY', key, path, value)
    elseif op == 'keeplast' then
      local keep = tonumber(value)
      local len = redis.call('JSON.ARRLEN', key, path)[1]
      if len > keep then
        if keep == 0 then
          redis.call('JSON.SET', key, path, '[]')
        else
          redis.call('JSON.ARRTRIM', key, path, len - keep, len - 1)
        end
      end
    end
  end
else
  redis.call('JSON.SET', key, '$', ARGV[4])
end
redis.call('JSON.SET', key, '$.version', new)

if ttl_ms > 0 then
  redis.call('PEXPIRE', key, ttl_ms)
elseif ttl_ms == 0 then
  redis.call('PERSIST', key)
end
return {'ok', new}
"""
