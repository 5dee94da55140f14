"""The Lua scripts the cluster runs in Redis: each one change, atomic, with its publish.

Times inside Redis come from Redis' own `TIME`, so the hosts' clocks never
decide when a slot expires. Keys (`{name}` is `[cluster] name`, `{key}` a
secret's `Secret.key`):

- `{name}:slots:{key}`  sorted set: member `host|n`, score = expiry (ms, Redis time)
- `{name}:book:{key}`   hash: the book (cluster_books.py), expires 8 days after its last change
- `{name}:budget:{key}` hash: the request bucket (cluster_budgets.py): `l` limit,
  `r` refill per second, `v` level at `t` (ms, Redis time), `n` tokens taken so far,
  `s` the serial of the newest reading taken, `rt` when the rate was last sampled
- `{name}:owner:{key}`  string: the host that owns a refresh token
- `{name}:hosts`        sorted set: host -> last heartbeat (ms, Redis time)
- `{name}:bus`          the pub/sub channel of every change
"""

from __future__ import annotations

from typing import Final

SLOTS: Final = """
-- KEYS[1] slots; ARGV: channel, host, limit, keep, ttl_ms...  (one ttl per slot wanted)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, host = KEYS[1], ARGV[2]
local limit, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local want = #ARGV - 4
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local prefix = host .. '|'
local all = redis.call('ZRANGE', key, 0, -1)
local mine = 0
for _, m in ipairs(all) do
  if string.sub(m, 1, #prefix) == prefix then
    mine = mine + 1
    redis.call('ZREM', key, m)
  end
end
local others = #all - mine
local allowed = math.min(want, limit - others)
-- Slots that back leases already out are never taken back (profiles files may disagree).
if allowed < math.min(keep, want) then allowed = math.min(keep, want) end
if allowed < 0 then allowed = 0 end
local longest = 0
for i = 1, allowed do
  local ttl = tonumber(ARGV[4 + i])
  redis.call('ZADD', key, now + ttl, prefix .. i)
  if ttl > longest then longest = ttl end
end
if allowed > 0 and redis.call('PTTL', key) < longest then
  redis.call('PEXPIRE', key, longest)
end
if allowed < mine then
  redis.call('PUBLISH', ARGV[1], cjson.encode({h = host, k = string.match(key, '[^:]*$'), f = 1}))
end
return {allowed, others}
"""

BOOK: Final = """
-- KEYS[1] book; ARGV: channel, host, key, sent_at, then (op, field, value) triples.
-- op max: keep the value whose leading number is larger; op del: drop the field.
local book = KEYS[1]
local changed = false
local function num(v)
  return tonumber(string.match(v, '^[^|]*')) or -math.huge
end
for i = 5, #ARGV, 3 do
  local op, f, v = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'del' then
    if redis.call('HDEL', book, f) == 1 then changed = true end
  elseif op == 'max' then
    local cur = redis.call('HGET', book, f)
    if not cur or num(cur) < num(v) or (num(cur) == num(v) and cur ~= v and v > cur) then
      redis.call('HSET', book, f, v)
      changed = true
    end
  end
end
if changed then
  redis.call('HINCRBY', book, '_v', 1)
  redis.call('EXPIRE', book, 691200)
end
local all = redis.call('HGETALL', book)
if changed then
  local msg = {h = ARGV[2], k = ARGV[3], t = tonumber(ARGV[4]), v = all}
  redis.call('PUBLISH', ARGV[1], cjson.encode(msg))
end
return all
"""

BUDGET: Final = """
-- KEYS[1] budget; ARGV: want, give, limit, rate, level, serial, remaining, ahead_ms,
-- sample, age_ms (of the reading).
-- Refill, take back `give` tokens, set the level from a reading newer than any
-- before (remaining, as of token `serial`), then take up to `want` tokens: each valid now or booked
-- `wait` ms ahead (no further than ahead_ms). A missing bucket starts at `level` and
-- `rate`; then the refill rate is the largest `sample` (a lower bound) of the last 60 s.
-- Returns {last serial, level, rate, wait_ms...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local b = KEYS[1]
local want, give = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = redis.call('HMGET', b, 'l', 'r', 'v', 't', 'n', 'rt')
local v, n, rt
if cur[3] then
  v, n, rt = tonumber(cur[3]), tonumber(cur[5]), tonumber(cur[6])
  rate = tonumber(cur[2])
  v = math.min(tonumber(cur[1]), v + rate * math.max(0, now - tonumber(cur[4])) / 1000)
else
  v, n, rt = math.min(limit, tonumber(ARGV[5])), 0, 0
end
if ARGV[9] ~= '' then
  local sample = tonumber(ARGV[9])
  if rt == 0 or sample >= rate or now - rt > 60000 then
    rate, rt = sample, now
  end
end
v = math.min(limit, v + give)
local read = tonumber(redis.call('HGET', b, 's') or '0')
if ARGV[6] ~= '' and tonumber(ARGV[6]) > read and tonumber(ARGV[6]) <= n then
  -- The newest reading sets the level: what it left, less every token taken since,
  -- plus the refill since the host took it.
  read = tonumber(ARGV[6])
  v = math.min(limit, tonumber(ARGV[7]) + rate * tonumber(ARGV[10]) / 1000 - (n - read))
end
local ahead = tonumber(ARGV[8])
local out = {0, '', ''}
for i = 1, want do
  local wait = 0
  if v < 1 then wait = math.ceil((1 - v) / rate * 1000) end
  if wait > ahead then break end
  v = v - 1
  n = n + 1
  out[#out + 1] = wait
end
redis.call('HSET', b, 'l', tostring(limit), 'r', tostring(rate), 'v', tostring(v),
           't', tostring(now), 'n', tostring(n), 's', tostring(read), 'rt', tostring(rt))
redis.call('PEXPIRE', b, 600000)
out[1] = n
out[2] = tostring(v)
out[3] = tostring(rate)
return out
"""

WANT: Final = """
-- ARGV: channel, host, key: this host waits for a slot of key.
redis.call('PUBLISH', ARGV[1], cjson.encode({h = ARGV[2], k = ARGV[3], w = 1}))
return 1
"""

HEARTBEAT: Final = """
-- KEYS[1] hosts; ARGV: host, stale_ms. Returns the live hosts and Redis' time (s, us).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return {redis.call('ZRANGE', KEYS[1], 0, -1), t[1], t[2]}
"""

CLAIM: Final = """
-- KEYS[1] owner; ARGV: host, ttl_s. The first host to claim owns it; its claims renew it.
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return ARGV[1]
end
if owner == ARGV[1] then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return owner
"""

ALL: Final = {"slots": SLOTS, "book": BOOK, "want": WANT, "budget": BUDGET,
              "heartbeat": HEARTBEAT, "claim": CLAIM}
"""Every script by the name the cluster calls it."""
