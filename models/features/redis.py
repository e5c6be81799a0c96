"""Redis backend of the feature store: redis.asyncio, one round trip per call.

A write's operations, however many, go as one ``EVALSHA`` of a small Lua script
(``WRITE_SCRIPT``) that applies them in order, atomically: one command to pack and
one reply to parse. The script first checks that every key holds the kind of value its
operation needs, and refuses the whole write (``StoreDataError``) when one does not:
Redis does not undo the commands a script ran before one that failed. Where the
server or the ACL user refuses scripts, the store logs it once and sends the same
operations as a MULTI/EXEC from then on, with the same check a round trip ahead.
Reads and writes issued in one turn of the event loop share one round trip, in the
order issued (``RedisStore.write_ahead`` lets a writer go on and read: its reads see
the write).

Works with Redis and Valkey. Keys of one user share a hash tag (see
``models.features.keys``), but a batch touches many users and items, so one store
is one server (or a primary with replicas), not a Redis Cluster. Connection errors
and timeouts surface as ``StoreError``; retries are the caller's policy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Sequence

import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, NoScriptError, RedisError, ResponseError
from redis.utils import HIREDIS_AVAILABLE

from models.features.store import (READ_NEEDS, WRITE_NEEDS, ReadOp, StoreDataError, StoreError, WriteOp,
                                   counts_as_number, first_misfit, key_for_humans)


def _hiredis_packing(connection_class: type) -> type:
    """``connection_class`` packing commands with hiredis (C), as redis-py's synchronous
    client already does; its asyncio client packs in Python, which is most of the cost
    of a pipeline of small commands."""
    if not HIREDIS_AVAILABLE:
        return connection_class
    packer = HiredisRespSerializer()
    return type(f"Hiredis{connection_class.__name__}", (connection_class,),
                {"pack_command": lambda self, *args: packer.pack(*args)})


if HIREDIS_AVAILABLE:
    from hiredis import pack_command as _pack_command
else:  # pragma: no cover - hiredis is a dependency
    _pack_command = None


try:  # redis-py's marker for "the reader needs more bytes" (False before 6.2)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - older redis-py
    NOT_ENOUGH_DATA = False


async def _replies(conn: Any, n: int) -> list[Any]:
    """The next ``n`` replies on ``conn``, error replies as ``ResponseError`` values.

    With hiredis, straight from the connection's reader: redis-py's ``read_response``
    opens a timeout and checks the connection's health for every reply, several
    microseconds each, and a batch's round trip carries hundreds of replies (the
    caller bounds the whole round trip's time and drops the connection on any error,
    as ``read_response`` does per reply). Without hiredis, or on RESP3, through
    ``read_response``.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    # the store speaks RESP2 (``from_url``): no push messages between replies, which on
    # RESP3 only ``read_response`` sorts out
    resp2 = str(getattr(conn, "protocol", 2) or 2) == "2"
    if reader is None or not hasattr(reader, "gets") or not hasattr(parser, "read_from_socket") or not resp2:
        return await read_each(conn, n)
    gets, more = reader.gets, parser.read_from_socket
    replies = []
    while len(replies) < n:
        reply = gets()
        if reply is NOT_ENOUGH_DATA:
            await more()
            continue
        # what redis-py's parser raises rather than returns (a refused connection)
        if isinstance(reply, RedisConnectionError):
            raise reply
        if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
            raise reply[0]
        replies.append(reply)
    return replies


async def read_each(conn: Any, n: int) -> list[Any]:
    """The next ``n`` replies on ``conn`` through redis-py's ``read_response``, one call
    each, error replies as ``ResponseError`` values (``_replies`` without hiredis)."""
    replies = []
    for _ in range(n):
        try:
            replies.append(await conn.read_response())
        except ResponseError as e:
            replies.append(e)
    return replies


def _packed(conn: Any, commands: list[tuple]) -> list[bytes]:
    """``commands`` in the wire protocol, one hiredis call each (this store's commands
    hold only names without spaces, str, bytes, int and float: nothing for redis-py's
    per-argument checks to convert); redis-py's packing without hiredis."""
    if _pack_command is None:
        return conn.pack_commands(commands)
    return [_pack_command(c) for c in commands]


log = logging.getLogger("streamrec.store")

#: Applies a batch of write operations in order, as one atomic command, or none of them.
#: ARGV is the operations flattened: name, key, then the name's operands (``_script_args``).
WRITE_SCRIPT = """
local a, i, n, call = ARGV, 1, #ARGV, redis.call
-- First every operation is checked, and the script refuses the whole write before
-- applying anything when a key holds another kind of value than its operation needs
-- (store.first_misfit, the same check in Python): all or nothing, even then. The
-- kind each operation needs is store.WRITE_NEEDS, written in below.
local needs = {NEEDS}
local width = {zincr=4, set=4, lpush=4, hincr=4, delete=2, ztrim=3, lrem=3, zrem=3, hdel=3,
  sadd=3, srem=3, expire=3}
local kinds, stored, replaced = {}, {}, {}
while i <= n do
  local op, key = a[i], a[i + 1]
  local need = needs[op]
  if need then
    if not kinds[key] then kinds[key] = call('TYPE', key)['ok']; stored[key] = kinds[key] end
    local kind = kinds[key]
    if kind ~= 'none' and kind ~= need then
      return redis.error_reply('MISFIT ' .. key .. ' holds a ' .. kind .. '; ' .. op .. ' needs a ' .. need)
    end
    if op == 'hincr' and stored[key] == 'hash' and not replaced[key] then
      local v = call('HGET', key, a[i + 2])
      if v and not tonumber(v) then
        return redis.error_reply('MISFIT ' .. key .. ' field ' .. a[i + 2] .. ' is not a number; hincr adds to numbers')
      end
    end
    kinds[key] = need
  elseif op == 'set' then kinds[key] = 'string'; replaced[key] = true
  elseif op == 'delete' then kinds[key] = 'none'; replaced[key] = true
  end
  if op == 'hset' then i = i + 3 + 2 * tonumber(a[i + 2])
  elseif width[op] then i = i + width[op]
  else return redis.error_reply('unknown write operation ' .. tostring(op)) end
end
i = 1
while i <= n do
  local op, key = a[i], a[i + 1]
  if op == 'zincr' then call('ZINCRBY', key, a[i + 3], a[i + 2]); i = i + 4
  elseif op == 'set' then
    if a[i + 3] == '0' then call('SET', key, a[i + 2]) else call('SET', key, a[i + 2], 'EX', a[i + 3]) end
    i = i + 4
  elseif op == 'lpush' then call('LPUSH', key, a[i + 2]); call('LTRIM', key, 0, tonumber(a[i + 3]) - 1); i = i + 4
  elseif op == 'hincr' then call('HINCRBYFLOAT', key, a[i + 2], a[i + 3]); i = i + 4
  elseif op == 'hset' then
    local pairs_ = tonumber(a[i + 2])
    local j, last = i + 3, i + 2 + 2 * pairs_
    while j <= last do  -- in slices: unpack's stack is bounded
      local upto = math.min(j + 199, last)
      call('HSET', key, unpack(a, j, upto))
      j = upto + 1
    end
    i = last + 1
  elseif op == 'delete' then call('DEL', key); i = i + 2
  elseif op == 'ztrim' then call('ZREMRANGEBYRANK', key, 0, -(tonumber(a[i + 2]) + 1)); i = i + 3
  elseif op == 'lrem' then call('LREM', key, 0, a[i + 2]); i = i + 3
  elseif op == 'zrem' then call('ZREM', key, a[i + 2]); i = i + 3
  elseif op == 'hdel' then call('HDEL', key, a[i + 2]); i = i + 3
  elseif op == 'sadd' then call('SADD', key, a[i + 2]); i = i + 3
  elseif op == 'srem' then call('SREM', key, a[i + 2]); i = i + 3
  elseif op == 'expire' then call('EXPIRE', key, a[i + 2]); i = i + 3
  else return redis.error_reply('unknown write operation ' .. tostring(op)) end
end
return i - 1
""".replace("{NEEDS}", "{" + ", ".join(f"{op}='{kind}'" for op, kind in WRITE_NEEDS.items()) + "}")

#: read operations over a list of keys or members
_MANY = frozenset({"mget", "hmget", "zscores"})

#: write operations of one operand that map to one command
_SIMPLE = {"zrem": "ZREM", "hdel": "HDEL", "sadd": "SADD", "srem": "SREM"}


class CommandRefused(StoreError):
    """The server refuses a command: it does not know it, or the ACL denies it."""


def _ttl(seconds: float) -> int:
    return max(1, int(seconds))


def _script_args(ops: Sequence[WriteOp]) -> list[Any]:
    """``ops`` flattened into ``WRITE_SCRIPT``'s ARGV.

    >>> _script_args([("set", "k", b"v", None), ("hset", "h", {"a": "1"}), ("delete", "x")])
    ['set', 'k', b'v', 0, 'hset', 'h', 1, 'a', '1', 'delete', 'x']
    """
    args: list[Any] = []
    extend = args.extend
    for op in ops:
        name = op[0]
        if name in ("zincr", "hincr", "lpush"):
            extend(op)
        elif name == "set":
            extend((name, op[1], op[2], _ttl(op[3]) if op[3] else 0))
        elif name == "hset":
            fields = op[2]
            extend((name, op[1], len(fields)))
            for kv in fields.items():
                extend(kv)
        elif name == "delete":
            extend(op[:2])
        elif name == "expire":
            extend((name, op[1], _ttl(op[2])))
        elif name in _SIMPLE or name in ("ztrim", "lrem"):
            extend(op[:3])
        else:
            raise StoreError(f"unknown write operation {name!r}")
    return args


def _answer(op: ReadOp, v: Any) -> Any:
    """A read operation's answer in the store protocol's types, from the server's raw
    reply (RESP2's flat arrays; RESP3's maps and pairs where a client speaks it).

    >>> _answer(("hgetall", "h"), [b"a", b"1", b"b", b"2"])
    {'a': '1', 'b': '2'}
    >>> _answer(("ztop", "z", 2), [b"x", b"3", b"y", b"1.5"])
    [('x', 3.0), ('y', 1.5)]
    """
    name = op[0]
    if name in ("get", "mget"):
        return v
    if name == "lrange" or name == "hmget":
        return [_str(x) for x in v]
    if name == "hgetall":
        pairs = v.items() if isinstance(v, dict) else zip(v[::2], v[1::2])
        return {_str(k): _str(x) for k, x in pairs}
    if name == "ztop":
        pairs = v if v and isinstance(v[0], (list, tuple)) else zip(v[::2], v[1::2])
        return [(_str(m), float(s)) for m, s in pairs]
    if name == "zscores":
        return [None if x is None else float(x) for x in v]
    return {_str(x) for x in v}


def _str(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _read_command(op: ReadOp) -> tuple | None:
    """The command answering read ``op``; None when there is nothing to ask (the server
    refuses an MGET of no keys)."""
    name, key = op[0], op[1]
    if name in _MANY and not op[-1]:
        return None
    if name == "get":
        return ("GET", key)
    if name == "hgetall":
        return ("HGETALL", key)
    if name == "lrange":
        return ("LRANGE", key, 0, op[2] - 1)
    if name == "ztop":
        return ("ZREVRANGE", key, 0, op[2] - 1, "WITHSCORES")
    if name == "mget":
        return ("MGET", *key)
    if name == "hmget":
        return ("HMGET", key, *op[2])
    if name == "zscores":
        return ("ZMSCORE", key, *op[2])
    if name == "smembers":
        return ("SMEMBERS", key)
    raise StoreError(f"unknown read operation {name!r}")


def _write_commands(ops: Sequence[WriteOp]) -> list[tuple]:
    """``ops`` as plain commands, for servers that refuse scripts (sent inside MULTI/EXEC)."""
    cmds: list[tuple] = []
    cmd = cmds.append
    for op in ops:
        name, key = op[0], op[1]
        if name == "zincr":
            cmd(("ZINCRBY", key, op[3], op[2]))
        elif name == "lpush":
            cmd(("LPUSH", key, op[2]))
            cmd(("LTRIM", key, 0, op[3] - 1))
        elif name == "hincr":
            cmd(("HINCRBYFLOAT", key, op[2], op[3]))
        elif name == "hset":
            if op[2]:
                cmd(("HSET", key, *[x for kv in op[2].items() for x in kv]))
        elif name == "set":
            cmd(("SET", key, op[2], "EX", _ttl(op[3])) if op[3] else ("SET", key, op[2]))
        elif name == "ztrim":
            cmd(("ZREMRANGEBYRANK", key, 0, -(op[2] + 1)))
        elif name == "lrem":
            cmd(("LREM", key, 0, op[2]))
        elif name in _SIMPLE:
            cmd((_SIMPLE[name], key, op[2]))
        elif name == "delete":
            cmd(("DEL", key))
        elif name == "expire":
            cmd(("EXPIRE", key, _ttl(op[2])))
        else:
            raise StoreError(f"unknown write operation {name!r}")
    return cmds


def _write_error(replies: list[Any]) -> BaseException | None:
    """The error of a write's replies (EVALSHA's, or MULTI's, QUEUED..., EXEC's), if any."""
    for r in replies:
        if isinstance(r, BaseException):
            return r
        if isinstance(r, list):
            bad = next((x for x in r if isinstance(x, BaseException)), None)
            if bad is not None:
                return bad
    return None


def _store_error(e: BaseException) -> StoreError | StoreDataError:
    """``e`` (a server's error reply, or the connection's failure) as the store's error;
    the message never carries the URL (it may hold a password), nor a shopper's id.
    A key of the wrong kind (the write script's ``MISFIT``, the server's
    ``WRONGTYPE`` or a counter that is not a number) is a ``StoreDataError``."""
    said = str(e)
    if isinstance(e, ResponseError) and said.startswith(("MISFIT ", "WRONGTYPE", "hash value is not a")):
        return StoreDataError(f"redis: {key_for_humans(said.removeprefix('MISFIT '))[:300]}")
    text = f"redis: {type(e).__name__}: {said[:200]}"
    if isinstance(e, NoPermissionError) or (isinstance(e, ResponseError) and "unknown command" in said.lower()):
        return CommandRefused(text)
    return StoreError(text)


def _read_error(ops: Sequence[ReadOp], asked: list, replies: list[Any]) -> StoreError | StoreDataError:
    """The error of a read's ``replies`` (one per command in ``asked``), naming the
    key when it holds the wrong kind of value."""
    sent = [op for op, c in zip(ops, asked) if c is not None]
    op, bad = next((op, r) for op, r in zip(sent, replies) if isinstance(r, ResponseError))
    error = _store_error(bad)
    if isinstance(error, StoreDataError) and op[0] in READ_NEEDS:
        return StoreDataError(f"redis: {key_for_humans(op[1])}: {op[0]} needs a {READ_NEEDS[op[0]]} ({error})")
    return error


def _behind(failed: BaseException) -> BaseException:
    """The error of an operation sent behind a write that failed: the same kind of error."""
    kind = StoreDataError if isinstance(failed, StoreDataError) else StoreError
    return kind(f"sent behind a write that failed ({failed})")


def _kind_checks(ops: Sequence[WriteOp]) -> list[tuple]:
    """The commands that tell ``first_misfit`` about ``ops``' keys: a ``TYPE`` per key an
    operation needs a kind of value in, an ``HGET`` per field an increment adds to."""
    keys = dict.fromkeys(op[1] for op in ops if op[0] in WRITE_NEEDS)
    fields = dict.fromkeys((op[1], op[2]) for op in ops if op[0] == "hincr")
    return [("TYPE", key) for key in keys] + [("HGET", key, field) for key, field in fields]


def _misfit(ops: Sequence[WriteOp], checks: list[tuple], replies: list[Any]) -> StoreDataError | None:
    """``first_misfit`` of ``ops`` from the replies to ``_kind_checks(ops)``."""
    kinds, values = {}, {}
    for cmd, reply in zip(checks, replies):
        if cmd[0] == "TYPE":
            kinds[cmd[1]] = reply.decode() if isinstance(reply, bytes) else str(reply)
        else:
            values[cmd[1:]] = reply

    def is_number(key: str, field: str) -> bool:
        v = values.get((key, field))
        return isinstance(v, Exception) or counts_as_number(v)

    why = first_misfit(ops, lambda key: kinds.get(key, "none"), is_number)
    return None if why is None else StoreDataError(f"redis: {why}")


class _SentWhenAwaited:
    """A lazy ``write_ahead``'s future: awaiting it sends the write if nothing took it yet."""

    __slots__ = ("_store", "_future")

    def __init__(self, store: "RedisStore", future: asyncio.Future) -> None:
        self._store, self._future = store, future

    def __await__(self):
        if not self._future.done():
            self._store._start_flush()
        return self._future.__await__()


class RedisStore:
    """Reads and writes issued in one turn of the event loop (e.g. by ``asyncio.gather``
    over a batch's recommendations) go to the server together, in the order they were
    issued, as one pipeline on one connection: a batch costs a few round trips,
    however many lists it builds. ``write_ahead`` lets a writer go on without waiting:
    its operations still land before any read issued after it.

    Commands go straight to a pooled connection of redis-py's (packed by hiredis, one
    deadline for the whole round trip): redis-py's ``Pipeline`` object, its per-reply
    callbacks and its retry wrapper cost more client CPU than the round trip itself.
    """

    kind = "redis"
    #: Most operations sent in one round trip.
    MAX_PIPELINE_OPS = 20_000
    #: Most turns of the event loop a round trip waits for more operations to join it.
    GATHER_TURNS = 4

    def __init__(self, client: aioredis.Redis, timeout_s: float = 2.0) -> None:
        self._r = client
        self.timeout_s = timeout_s
        #: (kind, operations, read commands or script arguments, future) in the order
        #: issued; kind is "read" or "write"
        self._pending: list[tuple[str, Sequence[Any], list, asyncio.Future]] = []
        self._flushing = False
        #: writes go as EVALSHA of this script; None once the server refused scripts
        self._script: Any = client.register_script(WRITE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> "RedisStore":
        """Connect lazily to ``redis://`` or ``rediss://`` (TLS); extra kwargs go to redis-py."""
        # One deadline per round trip instead of redis-py's per-reply socket timeout,
        # whose bookkeeping costs more than parsing the reply itself.
        client = aioredis.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout_s,
            health_check_interval=30, protocol=2, **kwargs)
        pool = client.connection_pool
        pool.connection_class = _hiredis_packing(pool.connection_class)
        return cls(client, timeout_s)

    async def read(self, ops: Sequence[ReadOp]) -> list[Any]:
        if not ops:
            return []
        return await self._issue("read", ops, [_read_command(op) for op in ops])

    async def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` in order and atomically: a batch's effects and its dedupe
        markers land together or not at all, which makes redelivery harmless. A key
        holding the wrong kind of value raises ``StoreDataError``, nothing applied.

        The whole batch goes as one ``EVALSHA`` of ``WRITE_SCRIPT`` (one command to
        pack and one reply to parse, however many operations); a server without
        scripting gets the same operations inside MULTI/EXEC.
        """
        if ops:
            await self.write_ahead(ops)

    def write_ahead(self, ops: Sequence[WriteOp], *, lazy: bool = False) -> Awaitable[None]:
        """Issue ``write(ops)`` now and return its future instead of waiting: the
        operations land before any read issued after this call, in the same round trip
        as reads issued in this turn of the event loop. Await the future to know they
        landed (it raises ``StoreError`` like ``write``; so does every read that was
        sent behind a failed write).

        ``lazy``: start no round trip for them; they go with the next operation issued
        after this call, or when the returned awaitable is awaited, whichever comes
        first (a batch's effects then share a round trip with its lists' records when
        every read of the lists was answered from a cache)."""
        if not ops:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        fut = self._issue("write", ops, _script_args(ops), start=not lazy)  # an unknown operation raises here
        return _SentWhenAwaited(self, fut) if lazy else fut

    def _issue(self, kind: str, ops: Sequence[Any], payload: list, start: bool = True) -> asyncio.Future:
        """Queue ``ops`` (with their read commands, or script arguments) for the next
        round trip, which ``start`` begins unless one is under way."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((kind, ops, payload, fut))
        if start:
            self._start_flush()
        return fut

    def _start_flush(self) -> None:
        if not self._flushing and self._pending:
            self._flushing = True
            # tasks started in this turn issue theirs before the flush sends (see _flush)
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))

    async def _flush(self) -> None:
        try:
            # Tasks started in the turn that issued first may start tasks of their own
            # (the candidate sources of each list) before they issue: wait while each
            # turn of the event loop adds to the round trip, a few turns at most.
            for _ in range(self.GATHER_TURNS):
                issued = len(self._pending)
                await asyncio.sleep(0)
                if len(self._pending) == issued:
                    break
            while self._pending:
                batch, size = [], 0
                while self._pending and (not batch or size + len(self._pending[0][1]) <= self.MAX_PIPELINE_OPS):
                    entry = self._pending.pop(0)
                    batch.append(entry)
                    size += len(entry[1])
                try:
                    answers = await self._send(batch)
                except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(e if isinstance(e, Exception) else StoreError(repr(e)))
                    if not isinstance(e, Exception):
                        raise
                    continue
                for (*_, fut), answer in zip(batch, answers):
                    if not fut.done():
                        if isinstance(answer, Exception):
                            fut.set_exception(answer)
                        else:
                            fut.set_result(answer)
                failed = next((a for (kind, *_), a in zip(batch, answers)
                               if kind == "write" and isinstance(a, Exception)), None)
                if failed is not None:  # what waits for the next round trip was issued behind it
                    behind, self._pending = self._pending, []
                    for *_, fut in behind:
                        if not fut.done():
                            fut.set_exception(_behind(failed))
        finally:
            self._flushing = False

    async def _send(self, batch: list[tuple[str, Sequence[Any], list, asyncio.Future]]) -> list[Any]:
        """Every entry's answer (a read's values, a write's None, or the ``StoreError``
        it gets) from one round trip. A server that does not have the script yet gets
        it with the same batch again (``EVAL``); one that refuses scripts gets the
        batch again with MULTI/EXEC, and every batch after it."""
        evalsha = True
        while True:
            # Without the script a transaction cannot refuse itself, so its keys' kinds
            # are checked a round trip ahead, and a write that misfits is not sent.
            misfits = await self._misfits(batch) if self._script is None else {}
            commands, spans = [], []
            for n, (kind, ops, payload, _) in enumerate(batch):
                start = len(commands)
                if kind == "read":
                    commands += [c for c in payload if c is not None]
                elif n in misfits:
                    pass
                elif self._script is not None:  # payload: the script's arguments
                    commands.append(("EVALSHA", self._script.sha, 0, *payload) if evalsha
                                    else ("EVAL", WRITE_SCRIPT, 0, *payload))
                else:
                    commands += [("MULTI",), *_write_commands(ops), ("EXEC",)]
                spans.append((start, len(commands)))
            replies = await self._roundtrip(commands)
            parts = [replies[a:b] for a, b in spans]
            errors = [misfits.get(n) or (_write_error(part) if kind == "write" else None)
                      for n, ((kind, *_), part) in enumerate(zip(batch, parts))]
            failed = [e for e in errors if e is not None]
            # Send it all again only when no write of the batch ran: reads are harmless
            # to repeat, a write that ran is not.
            if failed and not any(kind == "write" and e is None for (kind, *_), e in zip(batch, errors)):
                if evalsha and self._script is not None and all(isinstance(e, NoScriptError) for e in failed):
                    evalsha = False  # the server lost the script (restart, failover, SCRIPT FLUSH)
                    continue
                refused = _store_error(failed[0])
                if self._script is not None and isinstance(refused, CommandRefused):
                    log.warning("%s; writes go as MULTI/EXEC from now on", refused)
                    self._script = None
                    continue
            answers: list[Any] = []
            behind: BaseException | None = None  # set once a write failed: later reads saw without it
            for (kind, ops, asked, _), part, error in zip(batch, parts, errors):
                if kind == "write":
                    if error is not None:
                        answers.append(error if isinstance(error, StoreDataError) else _store_error(error))
                        behind = behind or _behind(answers[-1])
                    else:
                        answers.append(None)
                    continue
                error = next((r for r in part if isinstance(r, ResponseError)), None)
                if behind is not None or error is not None:
                    answers.append(behind or _read_error(ops, asked, part))
                    continue
                got = iter(part)
                answers.append([[] if c is None else _answer(op, next(got)) for op, c in zip(ops, asked)])
            return answers

    async def _misfits(self, batch: list[tuple[str, Sequence[Any], list, asyncio.Future]]) -> dict[int, StoreDataError]:
        """The writes of ``batch`` (by position) that ``first_misfit`` refuses, judged
        from one round trip of ``_kind_checks`` (the keys as stored before ``batch``)."""
        checks = {n: _kind_checks(ops) for n, (kind, ops, *_) in enumerate(batch) if kind == "write"}
        answered = await self._roundtrip([c for cs in checks.values() for c in cs])
        # An HGET of a key that is no hash answers WRONGTYPE (its TYPE says so too); any
        # other error (e.g. an ACL user denied TYPE) is the server's refusal, not a kind.
        errors = (_store_error(r) for r in answered if isinstance(r, Exception))
        refused = next((e for e in errors if not isinstance(e, StoreDataError)), None)
        if refused is not None:
            raise refused
        replies = iter(answered)
        found = {n: _misfit(batch[n][1], cs, [next(replies) for _ in cs]) for n, cs in checks.items()}
        return {n: e for n, e in found.items() if e is not None}

    async def _roundtrip(self, commands: list[tuple]) -> list[Any]:
        """Send ``commands`` on one pooled connection and read every reply (error replies
        as exceptions in the list), within ``timeout_s``. A connection that failed or
        timed out mid-way is closed, never handed to the next caller half read."""
        if not commands:
            return []
        pool = self._r.connection_pool
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await pool.get_connection()
                try:
                    await conn.send_packed_command(_packed(conn, commands))
                    replies = await _replies(conn, len(commands))
                except BaseException:
                    await conn.disconnect(nowait=True)
                    raise
                finally:
                    await pool.release(conn)
        except TimeoutError:
            raise StoreError(f"redis: no answer within {self.timeout_s}s") from None
        except (RedisError, OSError) as e:
            raise _store_error(e) from None
        return replies

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._r.aclose()
