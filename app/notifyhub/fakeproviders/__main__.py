"""``python -m fakeproviders``: run both fakes until interrupted, for demos and manual testing.

The base URLs and credentials are printed so they can be exported as NOTIFYHUB_TWILIO_BASE_URL,
NOTIFYHUB_EMAIL_BASE_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and RESEND_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from notifyhub.fakeproviders.resend import FakeResend
from notifyhub.fakeproviders.twilio import FakeTwilio


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fakeproviders", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--twilio-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--resend-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--account-sid", default=None, help="default: a random AC... SID")
    parser.add_argument("--auth-token", default=None, help="default: a random token")
    parser.add_argument("--api-key", default=None, help="Resend key; default: a random re_...")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    twilio = FakeTwilio(
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        host=args.host,
        port=args.twilio_port,
    )
    resend = FakeResend(api_key=args.api_key, host=args.host, port=args.resend_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await twilio.start()
    try:
        await resend.start()
        try:
            # Credentials are printed on purpose: they are throwaway values for a local fake.
            print(f"NOTIFYHUB_TWILIO_BASE_URL={twilio.base_url}")
            print(f"NOTIFYHUB_EMAIL_BASE_URL={resend.base_url}")
            print(f"TWILIO_ACCOUNT_SID={twilio.account_sid}")
            print(f"TWILIO_AUTH_TOKEN={twilio.auth_token}")
            print(f"RESEND_API_KEY={resend.api_key}", flush=True)
            await stop.wait()
        finally:
            await resend.stop()
    finally:
        await twilio.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        print(f"fakeproviders: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
