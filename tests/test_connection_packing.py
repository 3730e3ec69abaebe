"""qrunner's connection classes pack commands with hiredis's C packer: the bytes on the wire
are redis-py's own, what hiredis does not take goes to redis-py's packer, and commands packed
so reach a real server intact."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from qrunner.connection import GuardedConnection
from qrunner.runtime import connect_redis

ARGS: list[tuple[Any, ...]] = [
    ("PING",),
    ("EVALSHA", "ab" * 20, 2, "qr:{q}:stream", b"raw\x00bytes", 1.5, 0.1, 10**20, -3, "é"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "x"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),
    ("SET", "", ""),
]


@pytest.mark.parametrize("args", ARGS, ids=range(len(ARGS)))
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    ours = b"".join(GuardedConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


def test_a_pipeline_packs_as_its_commands_one_after_another() -> None:
    commands = [args for args in ARGS if not isinstance(args[-1], memoryview | bytearray)]
    ours = b"".join(GuardedConnection().pack_commands(commands))
    theirs = b"".join(b"".join(Connection().pack_command(*c)) for c in commands)
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, object()])
def test_values_redis_py_refuses_are_refused_the_same_way(bad: Any) -> None:
    with pytest.raises(DataError):
        GuardedConnection().pack_command("SET", "k", bad)


def test_another_encoding_is_packed_by_redis_py() -> None:
    conn = GuardedConnection(encoding="latin-1")
    assert (
        b"".join(conn.pack_command("SET", "k", "é"))
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    )


async def test_values_round_trip_through_a_server(redis_url: str) -> None:
    redis = await connect_redis(redis_url)
    try:
        values = ["é ü", "", "x" * 100_000, "a b c"]
        await redis.delete("packing")
        await redis.rpush("packing", *values, 7, 2.5)
        stored = await redis.lrange("packing", 0, -1)
        assert stored == [v.encode() for v in values] + [b"7", b"2.5"]
        pipe = redis.pipeline(transaction=False)
        pipe.set("packing:a", "1")
        pipe.incrbyfloat("packing:a", 0.5)
        pipe.get("packing:a")
        assert await pipe.execute() == [True, 1.5, b"1.5"]
    finally:
        await redis.aclose()


def test_hiredis_packs_when_it_can(monkeypatch: pytest.MonkeyPatch) -> None:
    import qrunner.connection as connection

    packed: list[tuple[Any, ...]] = []
    real = connection._hiredis_pack

    def spy(args: tuple[Any, ...]) -> bytes:
        packed.append(args)
        return real(args)

    monkeypatch.setattr(connection, "_hiredis_pack", spy)
    GuardedConnection().pack_command("CONFIG GET", "x")
    GuardedConnection().pack_commands([("PING",), ("GET", "k")])
    assert packed == [("CONFIG", "GET", "x"), ("PING",), ("GET", "k")]
