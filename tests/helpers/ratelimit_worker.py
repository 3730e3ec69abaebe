"""One OS process hammering a shared rate limit, for the distributed rate-limit tests.

Run as ``python tests/helpers/ratelimit_worker.py URL BUCKET RUN --rate 20/s --burst 20``.
It pushes its pid to ``test:{RUN}:ready``, waits for an end time (ms, Redis clock) on
``test:{RUN}:go``, then until that time: reads Redis ``TIME`` (``before``), calls
``RateLimiter.acquire``, and on a grant reads ``TIME`` again (``after``) and pushes
``"pid before after"`` to ``test:{RUN}:grants``; on a denial it sleeps the returned wait.
The true grant time lies in ``[before, after]``, which lets the test judge windows soundly
whatever the scheduling delays of a busy machine.

With ``--die-after N`` it SIGKILLs itself right after its N-th grant returns, before
recording it or doing anything else, like a worker killed between taking tokens and using them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from redis.asyncio import Redis

from qrunner.ratelimit import RateLimiter, RateLimitSpec
from qrunner.runtime import connect_redis


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def run(args: argparse.Namespace) -> None:
    redis = await connect_redis(args.url)
    try:
        limiter = RateLimiter(redis)
        spec = RateLimitSpec.parse(args.rate, burst=args.burst)
        prefix = f"test:{args.run}"
        await redis.rpush(f"{prefix}:ready", os.getpid())
        popped = await redis.blpop([f"{prefix}:go"], timeout=60)
        if popped is None:
            raise SystemExit("no go signal within 60 s")
        end_ms = int(popped[1])
        grants = 0
        while (before := await redis_ms(redis)) < end_ms:
            wait_s = await limiter.acquire(args.bucket, spec)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            grants += 1
            if args.die_after and grants >= args.die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            after = await redis_ms(redis)
            await redis.rpush(f"{prefix}:grants", f"{os.getpid()} {before} {after}")
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("bucket")
    parser.add_argument("run")
    parser.add_argument("--rate", required=True)
    parser.add_argument("--burst", type=int, default=None)
    parser.add_argument("--die-after", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
