"""What the Redis outbox stores: its keys, the Lua scripts that change an endpoint's keys
atomically, and a delivery as stored in its hash.

Keys, under the engine's prefix ``P``:

* ``P:{wh}:endpoints`` — hash, endpoint id → its configuration (JSON);
  ``P:{wh}:registry`` — a counter bumped by every change of that hash, so nodes notice changes
  with one ``GET``; ``P:{wh}:events`` — the lifecycle event version (``INCRBY``).
* per endpoint, all with the hash tag ``{wh:<id>}`` so that one Lua script may touch them all:
  ``q`` (sorted set, message id by queue position), ``d`` (hash, message id → delivery with its
  retry state), ``seq`` (the queue position counter), ``dead`` (sorted set of dead letters,
  ``"<seq>:<json>"`` by seq), ``dseq``, ``pos`` (hash, channel → last delivered position),
  ``state`` (hash: last error, last delivery, disabled reason), ``lease``, and ``bytes`` and
  ``dbytes`` (what the pending deliveries and the dead letters take, kept by the scripts that
  change them: see below).
* the pub/sub channel ``P.wh.registry`` announces registry changes, so that other nodes start
  queueing for a new endpoint within moments rather than at their next periodic look.
"""

from __future__ import annotations

from typing import Any

import orjson

from clarion.webhooks.endpoint import Delivery

# Byte counts: ``bytes`` (pending) and ``dbytes`` (dead letters) are hashes of ``n``, the bytes
# counted, and ``from``, the first queue (or dead-letter) position counted: what was stored
# before the counts existed (a hub upgraded with a backlog) is neither counted nor taken off.
_COUNTS = """
local function counted(q, bytes, id)
  local seq = redis.call('ZSCORE', q, id)
  local from = redis.call('HGET', bytes, 'from')
  return seq and from and tonumber(seq) >= tonumber(from)
end
local function uncount(q, d, bytes, id)
  if counted(q, bytes, id) then
    redis.call('HINCRBY', bytes, 'n', -redis.call('HSTRLEN', d, id))
  end
end
local function counted_letter(dbytes, letter)
  local from = redis.call('HGET', dbytes, 'from')
  return from and tonumber(string.match(letter, '^(%d+):')) >= tonumber(from)
end
"""

# KEYS: seq, q, d, bytes. ARGV: msg_id, delivery. A message id already pending stays where it is.
ENQUEUE = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[4], 'from', seq)
redis.call('HINCRBY', KEYS[4], 'n', #ARGV[2])
return seq
"""

# KEYS: q, d, dseq, dead, bytes, dbytes. ARGV: msg_id (or '' for a new delivery), dead letter,
# how many to keep, how many bytes of them (the newest is kept whatever its size). A delivery no
# longer pending (its endpoint deleted meanwhile) is left alone.
BURY = (
    _COUNTS
    + """
if ARGV[1] ~= '' then
  if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
  uncount(KEYS[1], KEYS[2], KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local seq = redis.call('INCR', KEYS[3])
local letter = seq .. ':' .. ARGV[2]
redis.call('ZADD', KEYS[4], seq, letter)
redis.call('HSETNX', KEYS[6], 'from', seq)
local held = redis.call('HINCRBY', KEYS[6], 'n', #letter)
for _, gone in ipairs(redis.call('ZRANGE', KEYS[4], 0, -(tonumber(ARGV[3]) + 1))) do
  redis.call('ZREM', KEYS[4], gone)
  if counted_letter(KEYS[6], gone) then held = redis.call('HINCRBY', KEYS[6], 'n', -#gone) end
end
while held > tonumber(ARGV[4]) and redis.call('ZCARD', KEYS[4]) > 1 do
  local oldest = redis.call('ZPOPMIN', KEYS[4])[1]
  if counted_letter(KEYS[6], oldest) then held = redis.call('HINCRBY', KEYS[6], 'n', -#oldest) end
end
return seq
"""
)

# KEYS: dead, dbytes. ARGV: a dead letter (its member). Taken out of the dead letters (revived).
UNBURY = (
    _COUNTS
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if counted_letter(KEYS[2], ARGV[1]) then redis.call('HINCRBY', KEYS[2], 'n', -#ARGV[1]) end
return 1
"""
)

# KEYS: q, d, state, bytes. ARGV: msg_id, delivery, last error, its time. Only while still
# pending: the keys of an endpoint deleted meanwhile are not brought back.
UPDATE = (
    _COUNTS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if counted(KEYS[1], KEYS[4], ARGV[1]) then
  redis.call('HINCRBY', KEYS[4], 'n', #ARGV[2] - redis.call('HSTRLEN', KEYS[2], ARGV[1]))
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], 'last_error', ARGV[3], 'last_error_at', ARGV[4])
return 1
"""
)

# KEYS: q, d, pos, state, bytes. ARGV: msg_id, channel (or ''), position, last msg id, its time.
DELIVERED = (
    _COUNTS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
uncount(KEYS[1], KEYS[2], KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[3], ARGV[2], ARGV[3]) end
redis.call('HSET', KEYS[4], 'last_msg_id', ARGV[4], 'last_delivered_at', ARGV[5])
return 1
"""
)

# KEYS: q, d. ARGV: limit. Flat list: seq, delivery, seq, delivery…
HEAD = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], ids[i]) or ''
end
return out
"""

# KEYS: lease. ARGV: node, ttl ms. 1: held (renewed), 2: newly taken, 0: another node has it.
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

# KEYS: lease. ARGV: node. Only our own lease: another node's is never touched.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

ENDPOINT_KEYS = ("q", "d", "seq", "dead", "dseq", "pos", "state", "lease", "bytes", "dbytes")


def encode_delivery(d: Delivery) -> bytes:
    return orjson.dumps(
        {
            "m": d.msg_id,
            "k": d.kind,
            "b": d.body.decode(),
            "c": d.channel,
            "e": d.epoch,
            "o": d.offset,
            "t": d.created_at,
            "a": d.attempts,
            "f": d.first_failure,
            "n": d.next_attempt,
            "l": d.last_error,
            "x": d.dead_at,
        }
    )


def decode_delivery(endpoint_id: str, seq: int, raw: bytes | str) -> Delivery:
    o = orjson.loads(raw)
    return Delivery(
        endpoint=endpoint_id,
        msg_id=o["m"],
        kind=o["k"],
        body=o["b"].encode(),
        channel=o["c"],
        epoch=o["e"],
        offset=o["o"],
        created_at=o["t"],
        seq=seq,
        attempts=o["a"],
        first_failure=o["f"],
        next_attempt=o["n"],
        last_error=o["l"],
        dead_at=o["x"],
    )


def as_text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def as_int(value: Any) -> int | None:
    return None if value is None else int(value)
