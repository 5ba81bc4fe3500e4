"""The Lua script behind every write: data, version and TTL change in one atomic step.

One script serves full writes (``save`` / ``insert``) and partial writes (``update``, ``touch``,
``append_history``). It checks the key's type (a legacy string value is never overwritten), the
stored version (optimistic concurrency), and for partial writes that the key still exists (a
partial write never resurrects an expired or deleted key) and that every path has the JSON type
the operation needs, before it writes anything: Redis does not roll back a script that fails
halfway, so all checks come first.

Arguments: ``KEYS[1]`` the key; ``ARGV[1]`` the mode (``save``, ``insert`` or ``patch``),
``ARGV[2]`` the TTL in ms (> 0: set it, 0: no expiry, -1: keep the current one), ``ARGV[3]`` the
expected version or ``''``. A full write then passes the document and the version it carries
(the caller's guess of the new version; when the guess is wrong the script writes the right one
with a second command). A patch passes the number of operations and one ``op, path, value``
triple each:

- ``set``: JSON.SET ``path`` to the JSON ``value``;
- ``merge``: ``path`` is a top-level member name and ``value`` JSON that is neither an object
  nor null: all merges, the new version and foldable increments are written by one JSON.MERGE
  (the caller guarantees no other operation touches these members);
- ``append``: JSON.ARRAPPEND ``value`` (consecutive appends to one path go in one command);
- ``incr``: add the number ``value``; folded into the JSON.MERGE when the path is a top-level
  member holding an integer, ``value`` is an integer, both small enough to be exact in Lua, and
  no other operation touches the path. An integer too large for that is added exactly in decimal
  and saturates at the signed 64-bit limits (a counter never wraps; RedisJSON's NUMINCRBY would);
  JSON.NUMINCRBY otherwise (a float, or signs that differ, which can't overflow);
- ``keeplast``: keep only the last ``value`` elements of the array at ``path``;
- ``once``: ``path`` is a top-level member name (``_idem``) holding the document's window of
  recent idempotency keys, ``value`` an idempotency key. Checked before anything is written:
  when the key's digest (the first 16 hex digits of its SHA-1) is in the window, the script
  writes nothing and replies ``duplicate``. Otherwise the digest joins the window (the newest
  :data:`IDEMPOTENCY_WINDOW` are kept), written by the same JSON.MERGE. A full write (``save``)
  keeps the window of the document it replaces, so a retry stays safe across saves.

Every write command on an indexed document makes RediSearch index it again (about 10 us each on
the embedded server), and every byte passed into Lua costs too: the script reads with one
command, writes a patch with as few commands as it can, and a full write normally with one.

Change events (``Store(..., events=True)``, see :mod:`flywheel_state.events`): when the caller
passes ``KEYS[2]``, the stream ``{ns}:events``, the LAST five arguments are the event's
``kind, id, op, fields, maxlen`` (after everything above, so the positions of the other
arguments do not move; a full write passes ``op`` = ``''`` and the script names it ``created``
or ``updated`` from whether the key existed). The script appends the event with
``XADD KEYS[2] MAXLEN ~ maxlen * kind .. id .. op .. version <new> fields ..`` as its very last
command, after every write succeeded: each early return (a refused write of any kind, or any
later skip such as a duplicate idempotent append) emits nothing, and an event is never written
without its record nor a record without its event. :data:`DELETE_SCRIPT` does the same for
deletes.

Reply: ``{status, number}`` where status is ``ok`` (number = new version), ``corrupt`` (number
unused; a third element names the key's type), ``exists``, ``missing``, ``conflict`` (number =
stored version), ``badpath`` (a third element names the path) or ``duplicate`` (number = the
stored version; nothing was written).
"""

from __future__ import annotations

__all__ = ["DELETE_SCRIPT", "IDEMPOTENCY_MEMBER", "IDEMPOTENCY_WINDOW", "WRITE_SCRIPT"]

IDEMPOTENCY_WINDOW = 32
"""How many recent idempotency keys a session remembers (as 16-hex-digit digests)."""
IDEMPOTENCY_MEMBER = "_idem"
"""The document member holding them (not a model field: reads ignore it, nothing indexes it)."""

WRITE_SCRIPT = r"""
local key = KEYS[1]
local mode = ARGV[1]

-- Exact decimal arithmetic on non-negative integers (no leading zeros), for counters beyond
-- what a Lua number holds exactly.
local function dec_cmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function dec_add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48 end
    if j > 0 then d = d + string.byte(b, j) - 48 end
    out[#out + 1] = string.char(48 + d % 10)
    carry = math.floor(d / 10)
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end
local ttl_ms = tonumber(ARGV[2])
local expected = ARGV[3]

-- One read tells whether the key exists, holds a document, and at which version.
local raw = redis.pcall('JSON.GET', key, '$.version')
if type(raw) == 'table' and raw.err then
  local ktype = redis.call('TYPE', key)['ok']
  if ktype ~= 'ReJSON-RL' then
    return {'corrupt', 0, ktype}
  end
  return raw
end
local exists = raw ~= false
if mode == 'insert' and exists then
  return {'exists', 0}
end
if mode == 'patch' and not exists then
  return {'missing', 0}
end

local current = 0
if exists then
  local n = string.match(raw, '^%[(%-?%d+)')
  if n then
    current = tonumber(n)
  elseif mode == 'patch' and raw == '[]' then
    -- No version member: JSON.MERGE must not meet a root that is not an object.
    local t = redis.call('JSON.TYPE', key, '$')
    if t[1] ~= 'object' then
      return {'badpath', 0, '$'}
    end
  end
end
if expected ~= '' and tonumber(expected) ~= current then
  return {'conflict', current}
end
local new = current + 1

if mode ~= 'patch' then
  local idem = exists and redis.call('JSON.GET', key, '$._idem') or '[]'
  redis.call('JSON.SET', key, '$', ARGV[4])
  if tonumber(ARGV[5]) ~= new then
    redis.call('JSON.SET', key, '$.version', new)
  end
  if idem ~= '[]' then
    redis.call('JSON.SET', key, '$._idem', string.sub(idem, 2, -2))
  end
else
  local nops = tonumber(ARGV[4])
  local touches = {}
  for j = 0, nops - 1 do
    local op, path = ARGV[5 + 3 * j], ARGV[6 + 3 * j]
    if op == 'merge' then
      path = '$.' .. path
    end
    touches[path] = (touches[path] or 0) + 1
  end
  local folded = {}
  local exact = {}
  local once = {}
  local arrays = {}
  -- An append that is the first write (only 'once' and 'merge' before it, which write last)
  -- has its path's type checked by its own reply, without a JSON.TYPE: JSON.ARRAPPEND writes
  -- nothing and replies no length when the path is not an array.
  local lazy = {}
  local first = true
  for j = 0, nops - 1 do
    local i = 5 + 3 * j
    local op, path, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if op == 'append' and first and not arrays[path] then
      lazy[i] = true
      arrays[path] = true
    end
    if op ~= 'once' and op ~= 'merge' then
      first = false
    end
    if op == 'once' then
      local digest = string.sub(redis.sha1hex(value), 1, 16)
      local raw = redis.call('JSON.GET', key, '$.' .. path)
      local window = {}
      if raw ~= '[]' then
        local decoded = cjson.decode(raw)[1]
        if type(decoded) == 'table' then
          window = decoded
        end
      end
      for _, seen in ipairs(window) do
        if seen == digest then
          return {'duplicate', current}
        end
      end
      window[#window + 1] = digest
      while #window > @WINDOW@ do
        table.remove(window, 1)
      end
      once[i] = cjson.encode(window)
    elseif (op == 'append' or op == 'keeplast') and not arrays[path] then
      local t = redis.call('JSON.TYPE', key, path)
      if t[1] ~= 'array' then
        return {'badpath', 0, path}
      end
      arrays[path] = true
    elseif op == 'incr' then
      local cur = redis.call('JSON.GET', key, path)
      local digits = cur and string.match(cur, '^%[(%-?%d+)%]$')
      local int_value = string.match(value, '^%-?%d+$')
      if digits and #digits <= 15 and #value <= 15 and int_value
          and touches[path] == 1 and string.match(path, '^%$%.[%a_][%w_]*$') then
        folded[i] = tonumber(digits) + tonumber(value)
      elseif digits and int_value
          and (string.sub(digits, 1, 1) == '-') == (string.sub(value, 1, 1) == '-') then
        local negative = string.sub(digits, 1, 1) == '-'
        local sum = dec_add(negative and string.sub(digits, 2) or digits,
                            negative and string.sub(value, 2) or value)
        local limit = negative and '9223372036854775808' or '9223372036854775807'
        if dec_cmp(sum, limit) > 0 then
          sum = limit
        end
        exact[i] = (negative and '-' or '') .. sum
      else
        local t = redis.call('JSON.TYPE', key, path)[1]
        if t ~= 'integer' and t ~= 'number' then
          return {'badpath', 0, path}
        end
      end
    end
  end

  local patch = {'{"version":' .. new}
  local j = 0
  while j < nops do
    local i = 5 + 3 * j
    local op, path, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    j = j + 1
    if op == 'merge' then
      patch[#patch + 1] = ',"' .. path .. '":' .. value
    elseif op == 'once' then
      patch[#patch + 1] = ',"' .. path .. '":' .. once[i]
    elseif op == 'set' then
      redis.call('JSON.SET', key, path, value)
    elseif op == 'append' then
      local values = {value}
      while j < nops and #values < 1000 and ARGV[5 + 3 * j] == 'append'
          and ARGV[6 + 3 * j] == path do
        values[#values + 1] = ARGV[7 + 3 * j]
        j = j + 1
      end
      local lengths = redis.call('JSON.ARRAPPEND', key, path, unpack(values))
      if lazy[i] and type(lengths[1]) ~= 'number' then
        return {'badpath', 0, path}
      end
    elseif op == 'incr' then
      if folded[i] then
        patch[#patch + 1] = ',"' .. string.sub(path, 3) .. '":' .. string.format('%d', folded[i])
      elseif exact[i] then
        redis.call('JSON.SET', key, path, exact[i])
      else
        redis.call('JSON.NUMINCRBY', key, path, value)
      end
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
  patch[#patch + 1] = '}'
  redis.call('JSON.MERGE', key, '$', table.concat(patch))
end

if ttl_ms > 0 then
  redis.call('PEXPIRE', key, ttl_ms)
elseif ttl_ms == 0 then
  redis.call('PERSIST', key)
end
if #KEYS > 1 then
  local n = #ARGV
  local op = ARGV[n - 2]
  if op == '' then
    op = exists and 'updated' or 'created'
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[n], '*', 'kind', ARGV[n - 4], 'id',
    ARGV[n - 3], 'op', op, 'version', new, 'fields', ARGV[n - 1])
end
return {'ok', new}
""".replace("@WINDOW@", str(IDEMPOTENCY_WINDOW))

DELETE_SCRIPT = r"""
-- Used only with change events: KEYS[1] the record, KEYS[2] the stream; ARGV kind, id, maxlen.
-- Deletes the key and, when it existed, appends a 'deleted' event carrying its last version
-- ('' when the key held no document version, e.g. a legacy string). Returns 1 or 0 like DEL.
local raw = redis.pcall('JSON.GET', KEYS[1], '$.version')
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
local version = ''
if type(raw) == 'string' then
  version = string.match(raw, '^%[(%-?%d+)') or ''
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', ARGV[1], 'id', ARGV[2],
  'op', 'deleted', 'version', version, 'fields', '')
return 1
"""
