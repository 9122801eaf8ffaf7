"""The Lua scripts of the Redis engine.

Each runs atomically on the Redis server and touches only keys of one channel (one hash tag),
so it stays valid under Redis Cluster. Time comes from Redis (``TIME``), never from the nodes,
so history TTLs and presence expiry do not depend on the nodes' clocks agreeing.

A channel's stream holds entries whose ids are ``<offset>-0`` with fields ``t`` (publish time,
ms) and ``d`` (the JSON body). Offsets in a stream are contiguous from its first entry to the
channel's top offset: entries only ever leave from the head (size trim, TTL trim), which is
what lets the TTL trim binary-search by offset.

Long on purpose: every script the engine runs is here, next to the helpers they share, so that
what one key holds is read in one place.
"""

from __future__ import annotations

# The first line of a script that stores what a client sends (a publication, a presence
# entry): Redis 7 then checks `maxmemory` before the script runs and refuses it whole. Without
# it, Redis checks only until a script's first write, and a write that frees (the DEL of a
# stream left over from a lost meta) let the rest of a new channel's publish past the limit.
_DENY_OOM = "#!lua\n"

# Shared helpers, prepended to the scripts that need them.
_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A presence entry's address, '' when it has none (a client on a unix socket), as callers
-- pass it.
local function address_of(entry)
  local address = entry['address']
  if address == nil or address == cjson.null then return '' end
  return address
end

-- Let `key` live `ms` more, unless it lives longer already (a lease of another length).
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function offset_of(entry)
  return tonumber(string.match(entry[1], '^(%d+)'))
end

-- Publish time of the first entry at or after `offset`, or nil.
local function time_at(stream, offset)
  local e = redis.call('XRANGE', stream, offset, '+', 'COUNT', 1)
  if #e == 0 then return nil end
  return tonumber(e[1][2][2])
end

-- Drop entries published before `cutoff` (ms): they are past the history TTL.
local function trim_expired(stream, cutoff)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][2]) >= cutoff then return end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local hi = offset_of(last[1])
  if tonumber(last[1][2][2]) < cutoff then
    redis.call('DEL', stream)
    return
  end
  -- time(lo) < cutoff <= time(hi): find the first live offset.
  local lo = offset_of(first[1])
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local t = time_at(stream, mid)
    if t ~= nil and t < cutoff then lo = mid else hi = mid end
  end
  redis.call('XTRIM', stream, 'MINID', hi)
end

-- The channel's epoch and top offset; a meta made when gone (fresh epoch) lives `meta_ttl` ms.
local function load_meta(stream, meta, new_epoch, meta_ttl)
  local m = redis.call('HMGET', meta, 'e', 's')
  if m[1] then return m[1], tonumber(m[2]) end
  -- A stream left over from a lost meta belongs to an epoch nobody can name any more.
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', new_epoch, 's', 0)
  redis.call('PEXPIRE', meta, meta_ttl)
  return new_epoch, 0
end
"""

# KEYS: stream, meta, idempotency key
# ARGV: body, history size, history ttl ms, meta ttl ms, epoch if new, pub/sub channel
#       ('' = none; with wait_replicas, ANNOUNCE announces it after WAIT), idempotency window
#       ms ('0' = no key), publish command ('PUBLISH', or 'SPUBLISH' on a cluster: the shard
#       channel shares the keys' slot), durable ('1': the caller then WAITs for replicas, so
#       a duplicate writes too — see below)
# -> {offset, epoch, time, duplicate (0/1), earlier body or ''}
PUBLISH = (
    _DENY_OOM
    + _COMMON
    + """
local stream, meta, idem = KEYS[1], KEYS[2], KEYS[3]
local size, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local meta_ttl = math.max(tonumber(ARGV[4]), ttl)
local window = tonumber(ARGV[7])
local now = now_ms()
local epoch = load_meta(stream, meta, ARGV[5], meta_ttl)
if window > 0 then
  local seen = redis.call('HMGET', idem, 'e', 'o', 't', 'd')
  if seen[1] == epoch then
    -- WAIT counts the replicas that have this connection's last write: a repeat that wrote
    -- nothing would be acknowledged before the first one's write (made on another
    -- connection) had reached them. A write now comes after it in the replication stream.
    if ARGV[9] == '1' then redis.call('PEXPIRE', meta, meta_ttl) end
    return {tonumber(seen[2]), epoch, tonumber(seen[3]), 1, seen[4]}
  end
end
local offset = redis.call('HINCRBY', meta, 's', 1)
redis.call('PEXPIRE', meta, meta_ttl)
if size > 0 then
  trim_expired(stream, now - ttl)
  redis.call('XADD', stream, 'MAXLEN', size, offset, 't', now, 'd', ARGV[1])
  redis.call('PEXPIRE', stream, ttl)
else
  redis.call('DEL', stream)
end
if ARGV[6] ~= '' then
  redis.call(ARGV[8], ARGV[6],
    'p' .. string.format('%d', offset) .. ':' .. epoch .. ':' .. string.format('%d', now)
    .. ':' .. ARGV[1])
end
if window > 0 then
  redis.call('HSET', idem, 'e', epoch, 'o', offset, 't', now, 'd', ARGV[1])
  redis.call('PEXPIRE', idem, window)
end
return {offset, epoch, now, 0, ''}
"""
)

# KEYS: stream, meta
# ARGV: pub/sub channel, publish command ('PUBLISH' or 'SPUBLISH'), then per publication this
#       node saw WAIT confirm: epoch, offset, time, body
# -> how many publications were announced
# With wait_replicas the publish script announces nothing: a publication is announced only once
# WAIT has counted the replicas holding it. Confirmation is prefix-closed on a primary (a
# replica that has a write has every write the primary ran before it), so confirming offset n
# confirms every offset below it too. The meta's `a` is the top announced (none: nothing of the
# epoch yet): each call announces from the next offset up to its highest confirmed offset the
# primary holds, in offset order, reading the entries the call does not carry from the stream;
# calls from several nodes, arriving in any order, thus announce each publication once and in
# order. An offset neither among the call's
# own nor in the stream (trimmed, or history off, while another node's announcement was under
# way) is skipped: subscribers meet a gap, and the history read it starts resets them.
ANNOUNCE = (
    _COMMON
    + """
local stream, meta = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'e', 's', 'a')
if not m[1] then return 0 end  -- the meta is gone: so are its publications (a new epoch comes)
local epoch, top = m[1], tonumber(m[2])
local low, high, own = nil, 0, {}
for i = 3, #ARGV, 4 do
  if ARGV[i] == epoch then
    local o = tonumber(ARGV[i + 1])
    if low == nil or o < low then low = o end
    if o > high then high = o end
    own[o] = {ARGV[i + 2], ARGV[i + 3]}
  end
end
-- A primary promoted since may lack the newest of them: it announces what it holds.
high = math.min(high, top)
if low == nil or low > high then return 0 end
-- From the first not announced yet: this epoch's first when none was (another node's, written
-- before this node's own, may be confirmed by this node's WAIT first: it is announced here).
local from = 1
local announced = tonumber(m[3])
if announced ~= nil then
  if announced <= top then from = announced + 1 else from = low end
end
-- Bounds the script's time after a long run of unconfirmed publications; subscribers read
-- the older ones from the stream through their gap.
from = math.max(from, high - 999)
if from > high then return 0 end
local carried = 0
for o = from, high do
  if own[o] ~= nil then carried = carried + 1 end
end
local entries = {}
if carried <= high - from then  -- some are others' (or earlier unconfirmed) publications
  entries = redis.call('XRANGE', stream, from, high)
end
local n, i = 0, 1
for o = from, high do
  local t, d
  while entries[i] ~= nil and offset_of(entries[i]) < o do i = i + 1 end
  if own[o] ~= nil then
    t, d = own[o][1], own[o][2]
  elseif entries[i] ~= nil and offset_of(entries[i]) == o then
    t, d = entries[i][2][2], entries[i][2][4]
  end
  if d ~= nil then
    redis.call(ARGV[2], ARGV[1],
      'p' .. string.format('%d', o) .. ':' .. epoch .. ':' .. t .. ':' .. d)
    n = n + 1
  end
end
redis.call('HSET', meta, 'a', high)
return n
"""
)

# KEYS: stream, meta
# ARGV: since epoch ('' = from the start), since offset, limit (-1 = no limit), epoch if new,
#       unwritten ttl ms, history ttl ms, history size, reverse ('1': newest first, before since),
#       announced ('1': with wait_replicas, read no further than the announced top), trusted
#       ('1': since is a position this node saw announced, not a client's cursor)
# -> {epoch, top offset, earliest offset, entries}
# A read gives a meta no more than the unwritten TTL: the epoch its readers were given, kept for
# a publication that may follow soon, not for a day (reading fresh names would fill Redis).
# With wait_replicas a write above the announced top `a` may still be waiting for its replicas,
# and may be lost in a failover and its offset given again: a reader that saw it would skip the
# publication given that offset. So the top a reader is shown is `a` (none yet in this epoch: 0),
# and what it reads stops there; never below the reader's own cursor (`a` may lag one that came
# from an announcement, after a failover that lost the meta's last HSET but not the writes; a
# made-up one costs only its reader, who then skips what it claimed to have).
HISTORY = (
    _COMMON
    + """
local stream, meta = KEYS[1], KEYS[2]
local ttl, size, limit = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[3])
local unwritten_ttl = tonumber(ARGV[5])
local epoch, top = load_meta(stream, meta, ARGV[4], unwritten_ttl)
if top == 0 and redis.call('PTTL', meta) > unwritten_ttl then
  -- Left by an earlier version, which gave a read's meta the full meta TTL.
  redis.call('PEXPIRE', meta, unwritten_ttl)
end
if ARGV[1] == epoch and tonumber(ARGV[2]) > top and ARGV[8] ~= '1' and ARGV[10] == '1' then
  -- The node (reading forwards) saw offsets this Redis never stored: it lost writes (a
  -- failover to a replica that had not received them). Their offsets would be given again to other
  -- publications: start a new epoch, so that every reader gets a reset instead. Only the node's
  -- own positions are evidence: a client's cursor is not signed, and anyone may write one
  -- (it is answered with the top, which the hub turns into a `position` reset).
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', ARGV[4], 's', 0)
  redis.call('HDEL', meta, 'a')  -- the announced top (ANNOUNCE) was the old epoch's
  redis.call('PEXPIRE', meta, unwritten_ttl)
  epoch, top = ARGV[4], 0
end
if ARGV[9] == '1' then
  local visible = tonumber(redis.call('HGET', meta, 'a') or '0')
  if ARGV[1] == epoch then visible = math.max(visible, tonumber(ARGV[2])) end
  top = math.min(top, visible)
end
if size == 0 then
  redis.call('DEL', stream)
else
  trim_expired(stream, now_ms() - ttl)
  redis.call('XTRIM', stream, 'MAXLEN', size)
end
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
local earliest = top + 1
if #first > 0 then earliest = math.min(offset_of(first[1]), top + 1) end
local entries = {}
if limit ~= 0 and (ARGV[1] == '' or ARGV[1] == epoch) and ARGV[8] == '1' then
  local stop = top
  if ARGV[1] ~= '' then stop = math.min(stop, tonumber(ARGV[2]) - 1) end
  if stop >= earliest then
    if limit > 0 then
      entries = redis.call('XREVRANGE', stream, stop, earliest, 'COUNT', limit)
    else
      entries = redis.call('XREVRANGE', stream, stop, earliest)
    end
  end
elseif limit ~= 0 and (ARGV[1] == '' or ARGV[1] == epoch) then
  local start = earliest
  if ARGV[1] ~= '' then start = math.max(start, tonumber(ARGV[2]) + 1) end
  if start <= top then
    if limit > 0 then
      entries = redis.call('XRANGE', stream, start, top, 'COUNT', limit)
    else
      entries = redis.call('XRANGE', stream, start, top)
    end
  end
end
return {epoch, top, earliest, entries}
"""
)

# KEYS: expiry zset
# ARGV: ttl ms, "add" or "renew", then members
# A node's periodic refresh of its connection counts. "renew" extends the leases of the members
# still there and returns the others, for the node to add back those it still holds ("add"): a
# member released while the refresh was under way is not counted again. One argument per member
# and one ZADD per 500: the refresh of 10,000 connections costs the node and Redis a fraction of
# a call per member.
CONNECTION_RENEW = (
    _COMMON
    + """
local zset, ttl, add = KEYS[1], tonumber(ARGV[1]), ARGV[2] == 'add'
local expires = now_ms() + ttl
local missing = {}
for i = 3, #ARGV, 500 do
  local last = math.min(i + 499, #ARGV)
  local scores = add and {} or redis.call('ZMSCORE', zset, unpack(ARGV, i, last))
  local pairs = {}
  for j = 1, last - i + 1 do
    if add or scores[j] then
      pairs[#pairs + 1] = expires
      pairs[#pairs + 1] = ARGV[i + j - 1]
    else
      missing[#missing + 1] = ARGV[i + j - 1]
    end
  end
  if #pairs > 0 then redis.call('ZADD', zset, unpack(pairs)) end
end
if redis.call('EXISTS', zset) == 1 then redis.call('PEXPIRE', zset, ttl) end
return missing
"""
)

# Presence keeps, per channel, the clients' leases (expiry zset), their entries (hash), the
# users' leases (users zset: each user scored with the latest lease of its clients, so a user
# is live exactly while one of its clients is), and per user the leases of its clients. The
# leases and entries outlive the last lease by as long again: an entry whose lease ended is
# there for a node to take out and send its leave (PRESENCE_LAPSE), even when it was the last.

# KEYS: expiry zset, entries hash, users zset, then one user zset per entry (anything for an
# entry without a user)
# ARGV: ttl ms, then triples of client, entry value, user ('' = none)
# Adds or refreshes clients; each lease ends `ttl` after this call unless refreshed again.
PRESENCE_ADD = (
    _DENY_OOM
    + _COMMON
    + """
local zset, hash, users, ttl = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
local expires = now_ms() + ttl
local n = (#ARGV - 1) / 3
for i = 1, n do
  local client, value, user = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  redis.call('ZADD', zset, expires, client)
  redis.call('HSET', hash, client, value)
  if user ~= '' then
    redis.call('ZADD', KEYS[3 + i], expires, client)
    extend(KEYS[3 + i], ttl)
    redis.call('ZADD', users, 'GT', expires, user)
  end
end
extend(zset, 2 * ttl)
extend(hash, 2 * ttl)
extend(users, ttl)
return 1
"""
)

# KEYS: expiry zset, entries hash, users zset, the entry's user zset (the users zset for an
# entry without a user)
# ARGV: lease ms, client, entry value, user ('' = none), create ('1' or '0'), address
# -> 0: renewed; 1: added; 2: absent, not added; 3: the id names another user's entry (without
#    a user: one held from another address) or a connection's (whose transport is not "poll"),
#    left as it is.
# A long-poll client's entry: no node holds it, and its lease runs from each poll.
PRESENCE_HOLD = (
    _DENY_OOM
    + _COMMON
    + """
local zset, hash, users, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lease, client, value, user = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local status = 1
local old = redis.call('HGET', hash, client)
if old then
  local was = cjson.decode(old)
  local was_user = was['user']
  if was_user == nil or was_user == cjson.null then was_user = '' end
  if was['transport'] ~= 'poll' or was_user ~= user then return 3 end
  if user == '' and address_of(was) ~= ARGV[6] then return 3 end
  status = 0
elseif ARGV[5] ~= '1' then
  return 2
end
local expires = now_ms() + lease
redis.call('ZADD', zset, expires, client)
if status == 1 then redis.call('HSET', hash, client, value) end
if user ~= '' then
  redis.call('ZADD', mine, expires, client)
  extend(mine, lease)
  -- The user lives as long as its newest lease: this one may have been shortened (a client
  -- that said it leaves, kept for the grace of its user's leave).
  local newest = redis.call('ZRANGE', mine, -1, -1, 'WITHSCORES')
  redis.call('ZADD', users, newest[2], user)
  extend(users, lease)
end
extend(zset, 2 * lease)
extend(hash, 2 * lease)
return status
"""
)

# KEYS: expiry zset, entries hash, users zset, then one user zset per client with a user
# ARGV: ttl ms, the number n of clients without a user, those n clients, then pairs of client,
#       user
# -> the clients whose entry is missing (Redis lost it, or a reader dropped it as expired): the
#    node adds them again with their entries. The others' leases are renewed, their entries
#    left as they are: a node's periodic refresh sends no entry, and one argument per client
#    without a user.
PRESENCE_RENEW = (
    _COMMON
    + """
local zset, hash, users, ttl = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
local expires = now_ms() + ttl
local plain = tonumber(ARGV[2])
local missing = {}
for i = 3, 2 + plain, 500 do
  local last = math.min(i + 499, 2 + plain)
  local scores = redis.call('ZMSCORE', zset, unpack(ARGV, i, last))
  local pairs = {}
  for j = 1, last - i + 1 do
    if scores[j] then
      pairs[#pairs + 1] = expires
      pairs[#pairs + 1] = ARGV[i + j - 1]
    else
      missing[#missing + 1] = ARGV[i + j - 1]
    end
  end
  if #pairs > 0 then redis.call('ZADD', zset, unpack(pairs)) end
end
local k = 4
for i = 3 + plain, #ARGV, 2 do
  local client, user = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', zset, client) then
    redis.call('ZADD', zset, expires, client)
    redis.call('ZADD', KEYS[k], expires, client)
    extend(KEYS[k], ttl)
    redis.call('ZADD', users, 'GT', expires, user)
  else
    missing[#missing + 1] = client
  end
  k = k + 1
end
extend(zset, 2 * ttl)
extend(hash, 2 * ttl)
extend(users, ttl)
return missing
"""
)

# An entry of `client` is gone: its user's own zset loses it, and the users zset keeps the user
# with its newest lease left, or drops it. -> 1 when the user has no client left, else 0.
_FORGET = """
local function forget(users, mine, client, user, now)
  if user == '' then return 1 end
  redis.call('ZREM', mine, client)
  redis.call('ZREMRANGEBYSCORE', mine, '-inf', now)
  local newest = redis.call('ZRANGE', mine, -1, -1, 'WITHSCORES')
  if #newest == 0 then
    redis.call('ZREM', users, user)
    return 1
  end
  redis.call('ZADD', users, newest[2], user)
  return 0
end
"""

# KEYS: expiry zset, entries hash, users zset, then one user zset per client (anything for a
# client without a user)
# ARGV: pairs of client, user ('' = none)
# -> per client, 1 when its user has no live client left (or it has no user), else 0
PRESENCE_REMOVE = (
    _COMMON
    + _FORGET
    + """
local zset, hash, users = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local out = {}
for i = 1, #ARGV / 2 do
  local client, user, mine = ARGV[2 * i - 1], ARGV[2 * i], KEYS[3 + i]
  redis.call('ZREM', zset, client)
  redis.call('HDEL', hash, client)
  out[i] = forget(users, mine, client, user, now)
end
return out
"""
)

# KEYS: expiry zset, entries hash, users zset, the entry's user zset (the users zset for an
# entry without a user)
# ARGV: client, user ('' = none), address
# -> the entry, taken out, when it is a long-poll client's of that user (without a user: from
#    that address); else nil, nothing changed.
PRESENCE_RELEASE = (
    _COMMON
    + _FORGET
    + """
local zset, hash, users, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local client, user = ARGV[1], ARGV[2]
local old = redis.call('HGET', hash, client)
if not old then return false end
local was = cjson.decode(old)
local was_user = was['user']
if was_user == nil or was_user == cjson.null then was_user = '' end
if was['transport'] ~= 'poll' or was_user ~= user then return false end
if user == '' and address_of(was) ~= ARGV[3] then return false end
redis.call('ZREM', zset, client)
redis.call('HDEL', hash, client)
forget(users, mine, client, user, now_ms())
return old
"""
)

# KEYS: announced set, users zset
# ARGV: user, ttl ms
# -> 1 when the user was not announced yet (a join is due), else 0
PRESENCE_ANNOUNCE = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return added
"""

# KEYS: announced set, users zset
# ARGV: user
# -> 1 when the user was announced and has no live client (a leave is due), else 0
PRESENCE_RETIRE = (
    _COMMON
    + """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) > now_ms() then return 0 end
return redis.call('SREM', KEYS[1], ARGV[1])
"""
)

# KEYS: expiry zset, users zset
# -> {live clients, live users}: two counts in O(log n), nothing listed
PRESENCE_STATS = (
    _COMMON
    + """
local bound = '(' .. now_ms()
return {redis.call('ZCOUNT', KEYS[1], bound, '+inf'), redis.call('ZCOUNT', KEYS[2], bound, '+inf')}
"""
)

# KEYS: expiry zset, entries hash, users zset
# ARGV: how long (ms) an ended lease stays for PRESENCE_LAPSE to find (its leave is sent then),
#       at most how many entries (-1: all)
# -> flat list of member, value of live entries, soonest lease end first (entries whose lease
#    ended longer ago than that, at most 1000 a call, and lapsed users, are dropped first)
# A bounded read walks only the entries it returns: a client's read of a channel of 30,000
# costs Redis what a channel of a thousand does (a full read blocked every node for ~30 ms).
PRESENCE_GET = (
    _COMMON
    + """
local zset, hash, users = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local old = now - tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', old, 'LIMIT', 0, 1000)
for i = 1, #expired, 500 do
  local last = math.min(i + 499, #expired)
  redis.call('HDEL', hash, unpack(expired, i, last))
  redis.call('ZREM', zset, unpack(expired, i, last))
end
redis.call('ZREMRANGEBYSCORE', users, '-inf', now)
local out, found, from = {}, 0, 0
if limit == 0 then return out end
while true do
  -- A lease without its entry (written together: only ever for an instant) is skipped; the
  -- next pass reads as many more.
  local count = -1
  if limit > 0 then count = limit - found end
  local live = redis.call('ZRANGEBYSCORE', zset, '(' .. now, '+inf', 'LIMIT', from, count)
  from = from + #live
  for i = 1, #live, 500 do
    local values = redis.call('HMGET', hash, unpack(live, i, math.min(i + 499, #live)))
    for j = 1, #values do
      if values[j] then
        out[#out + 1] = live[i + j - 1]
        out[#out + 1] = values[j]
        found = found + 1
      end
    end
  end
  if limit < 0 or found >= limit or #live < count then return out end
end
"""
)

# KEYS: expiry zset, entries hash
# ARGV: at most how many
# -> flat list of client, entry value of entries whose lease has ended (their node stopped
#    without removing them), now removed: each goes to the one caller that removed it, so its
#    leave is sent once
PRESENCE_LAPSE = (
    _COMMON
    + """
local zset, hash = KEYS[1], KEYS[2]
local ended = redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for i = 1, #ended, 500 do
  local chunk = {unpack(ended, i, math.min(i + 499, #ended))}
  local values = redis.call('HMGET', hash, unpack(chunk))
  for j = 1, #values do
    if values[j] then
      out[#out + 1] = chunk[j]
      out[#out + 1] = values[j]
    end
  end
  redis.call('ZREM', zset, unpack(chunk))
  redis.call('HDEL', hash, unpack(chunk))
end
return out
"""
)

# KEYS: the presence channels zset
# ARGV: lease ms, then channels
# Each channel is known to hold a lease until at least now + lease (raised, never lowered).
PRESENCE_CHANNELS_HOLD = (
    _COMMON
    + """
local expires = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV, 500 do
  local pairs = {}
  for j = i, math.min(i + 499, #ARGV) do
    pairs[#pairs + 1] = expires
    pairs[#pairs + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], 'GT', unpack(pairs))
end
redis.call('PEXPIRE', KEYS[1], 86400000)
"""
)

# KEYS: the presence channels zset
# ARGV: limit, claim ms
# -> {claim, channels...}: up to `limit` channels whose every lease known has ended, claimed by
#    the caller: scored `claim` (now + claim ms), so that the other nodes take others meanwhile,
#    and this one again if its caller stops before it settles them.
PRESENCE_CHANNELS_DUE = (
    _COMMON
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local claim = now + tonumber(ARGV[2])
for i = 1, #due do redis.call('ZADD', KEYS[1], 'XX', claim, due[i]) end
return {claim, unpack(due)}
"""
)

# KEYS: expiry zset of a channel
# -> when the last lease held there ends (ms), or false when none is
PRESENCE_LAST_LEASE = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then return false end
return last[2]
"""

# KEYS: the presence channels zset
# ARGV: channel, the caller's claim, the last lease there now ('' = none)
# A claimed channel is scored with its last lease (looked at again once it ends), or goes when
# none is left; unless a lease was recorded there since the claim (its score rose past it).
PRESENCE_CHANNELS_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
elseif score then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: expiry zset
# ARGV: ttl ms, then pairs of member, limit
# -> per member, in order: {admitted (0/1), members counted after it}
CONNECTION_ACQUIRE = (
    _COMMON
    + """
local zset, ttl = KEYS[1], tonumber(ARGV[1])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
local count = redis.call('ZCARD', zset)
local out = {}
local added = false
for i = 1, (#ARGV - 1) / 2 do
  local member, limit = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  if not redis.call('ZSCORE', zset, member) and count >= limit then
    out[i] = {0, count}
  else
    if redis.call('ZADD', zset, now + ttl, member) == 1 then count = count + 1 end
    out[i] = {1, count}
    added = true
  end
end
if added then redis.call('PEXPIRE', zset, ttl) end
return out
"""
)

# KEYS: expiry zset
# -> flat list: node, how many live members it holds (members are "<node>:<connection>"; an
#    older version's plain members are counted under "")
CONNECTION_NODES = (
    _COMMON
    + """
local counts, order = {}, {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')) do
  local node = string.match(member, '^([^:]*):') or ''
  if counts[node] == nil then
    counts[node] = 0
    order[#order + 1] = node
  end
  counts[node] = counts[node] + 1
end
local out = {}
for _, node in ipairs(order) do
  out[#out + 1] = node
  out[#out + 1] = counts[node]
end
return out
"""
)

# KEYS: expiry zset
# ARGV: nodes whose members go
# -> how many went
CONNECTION_PURGE = """
local dead = {}
for i = 1, #ARGV do dead[ARGV[i]] = true end
local gone = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local node = string.match(member, '^([^:]*):')
  if node and dead[node] then gone[#gone + 1] = member end
end
for i = 1, #gone, 500 do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + 499, #gone)))
end
return #gone
"""

# KEYS: the node directory's announce times (zset of node ids)
# -> {now (ms), flat list of node, last announce (ms)}
NODES_SEEN = (
    _COMMON
    + """
return {now_ms(), redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""
)

# KEYS: expiry zset -> members still alive
CONNECTION_COUNT = (
    _COMMON
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms(), '+inf')
"""
)

# KEYS: bucket hash
# ARGV: rate (tokens per second), burst (bucket size)
# -> 1 when a token was taken, else 0
RATE_TAKE = (
    _COMMON
    + """
local bucket = KEYS[1]
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local b = redis.call('HMGET', bucket, 'n', 't')
local tokens, last = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, last = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', bucket, 'n', tostring(tokens), 't', now)
redis.call('PEXPIRE', bucket, math.ceil(burst / rate * 1000) + 1000)
return taken
"""
)

# KEYS: revocations zset (member -> until), its change log (member -> change number), its mark
#       (a hash: "n" the last change number, "g" the name of this set of revocations)
# ARGV: member ("user:<id>" or "jti:<id>"), until, now (Unix seconds), a fresh name
# Keeps the later of two revocations of one member and drops lapsed ones; the keys expire with
# the last revocation, so nothing outlives what it refuses. A set started anew (the keys
# expired, or Redis lost them) gets a new name: a node's mark of the old one reads it whole.
# The log holds exactly the set's members; one that does not (a set kept by an earlier version,
# or written by one during an upgrade) is logged anew, every member as this change.
REVOKE = """
local n = redis.call('HINCRBY', KEYS[3], 'n', 1)
if n == 1 then redis.call('HSET', KEYS[3], 'g', ARGV[4]) end
if redis.call('ZCARD', KEYS[1]) ~= redis.call('ZCARD', KEYS[2]) then
  redis.call('DEL', KEYS[2])
  local held = redis.call('ZRANGE', KEYS[1], 0, -1)
  for i = 1, #held, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #held) do
      chunk[#chunk + 1] = n
      chunk[#chunk + 1] = held[j]
    end
    redis.call('ZADD', KEYS[2], unpack(chunk))
  end
end
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], n, ARGV[1])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 1000)
while #lapsed > 0 do
  redis.call('ZREM', KEYS[1], unpack(lapsed))
  redis.call('ZREM', KEYS[2], unpack(lapsed))
  lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 1000)
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local at = math.ceil(tonumber(last[2]))
  for i = 1, 3 do redis.call('EXPIREAT', KEYS[i], at) end
else
  redis.call('DEL', KEYS[3])  -- nothing in force: the next revocation starts a new set
end
return 1
"""

# KEYS: as REVOKE's
# ARGV: the name and change number of the caller's mark ("" and 0 for none), now
# Returns {name, n, member, until, member, until, ...}: the revocations in force changed after
# the mark, and the new mark. Read whole instead: without a mark or with one of another set; a
# set whose name names another Redis process than the mark's (restarted from its files, or a
# replica promoted: either may lack writes the mark counted), or whose count went back; a log
# that is not the set's (written by an earlier version, which keeps none).
REVOCATIONS_SINCE = """
local mark = redis.call('HMGET', KEYS[3], 'g', 'n')
local server = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
local name = (mark[1] or '') .. '.' .. string.sub(server, 1, 12)
local n = tonumber(mark[2] or '0')
local out = {name, tostring(n)}
local after = 0
if mark[1] and name == ARGV[1] then after = tonumber(ARGV[2]) end
if after > n or redis.call('ZCARD', KEYS[1]) ~= redis.call('ZCARD', KEYS[2]) then after = 0 end
if after == 0 then
  local held = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf', 'WITHSCORES')
  for i = 1, #held do out[#out + 1] = held[i] end
  return out
end
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. after, '+inf')
for i = 1, #members do
  local lapses = redis.call('ZSCORE', KEYS[1], members[i])
  if lapses and tonumber(lapses) > tonumber(ARGV[3]) then
    out[#out + 1] = members[i]
    out[#out + 1] = lapses
  end
end
return out
"""
