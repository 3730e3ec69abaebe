"""What both fake providers share: an aiohttp server on 127.0.0.1, request and message records,
scripted failures and the ``/_fake/*`` control endpoints.

The records exist so tests can assert on what the provider *received* (exactly one message after
a retried 500, say), which is the only view that catches duplicate sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import orjson
import pydantic
from aiohttp import web

from notifyhub.fakeproviders.failures import FailureKind, FailurePlan, FailureRequest, FailureRule

M = TypeVar("M")

#: How long ``stop()`` lets in-flight handlers finish; held responses are released first.
_SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake understood it; ``status`` is the answer it chose."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    status: int = 0
    failure: str | None = None


def json_response(
    payload: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        headers=headers,
        content_type="application/json",
    )


class FakeServer(Generic[M]):
    """Lifecycle, records and failure plan; subclasses add the provider's own routes."""

    name = "fake"

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        self.host = host
        self._requested_port = port
        self.clock = clock
        self.messages: list[M] = []
        self.requests: list[RecordedRequest] = []
        self.failures = FailurePlan()
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"{self.name} is already started")
        app = web.Application()
        self.add_routes(app)
        app.router.add_get("/_fake/messages", self._get_messages)
        app.router.add_get("/_fake/requests", self._get_requests)
        app.router.add_post("/_fake/failures", self._post_failure)
        app.router.add_get("/_fake/failures", self._get_failures)
        app.router.add_delete("/_fake/failures", self._delete_failures)
        app.router.add_post("/_fake/reset", self._post_reset)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._port = int(sock.getsockname()[1])
        self._release.clear()

    async def stop(self) -> None:
        """Releases held responses, then closes the listener and open connections."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._release.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def fail_next(
        self,
        kind: FailureKind | str,
        count: int = 1,
        *,
        match_to: str | None = None,
        retry_after_s: int | None = 1,
        hold_s: float = 30.0,
    ) -> FailureRule:
        """Queues a failure for the next ``count`` requests (to ``match_to`` only, if given).

        ``retry_after_s`` is the Retry-After header of a 429/503 (``None`` sends none);
        ``hold_s`` is how long a timeout-after-accept holds its response (``stop()`` ends it).
        """
        return self.failures.add(
            kind, count, match_to=match_to, retry_after_s=retry_after_s, hold_s=hold_s
        )

    async def wait_for_messages(self, n: int, timeout_s: float = 5.0) -> list[M]:
        """Waits until at least ``n`` messages were accepted; returns all of them."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: len(self.messages) >= n)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: {len(self.messages)} message(s) after {timeout_s:g}s, wanted {n}"
            ) from None
        return list(self.messages)

    def reset(self) -> None:
        """Forgets messages, requests and pending failures (between demo runs)."""
        self.messages.clear()
        self.requests.clear()
        self.failures.clear()

    async def accept(self, message: M) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def hold(self, seconds: float) -> None:
        """Keeps a response back for ``seconds`` or until the server stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._release.wait()

    def record(self, request: web.Request, body: dict[str, Any]) -> RecordedRequest:
        headers = {str(k): v for k, v in request.headers.items()}  # istr keys break orjson
        if "Authorization" in headers:
            scheme = headers["Authorization"].split(" ", 1)[0]
            headers["Authorization"] = f"{scheme} ***"
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=headers,
            body=body,
            received_at=self.clock(),
        )
        self.requests.append(recorded)
        return recorded

    async def _get_messages(self, request: web.Request) -> web.Response:
        return json_response({"messages": self.messages})

    async def _get_requests(self, request: web.Request) -> web.Response:
        return json_response({"requests": self.requests})

    async def _get_failures(self, request: web.Request) -> web.Response:
        return json_response({"pending": self.failures.pending()})

    async def _post_failure(self, request: web.Request) -> web.Response:
        try:
            spec = FailureRequest.model_validate_json(await request.read())
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
            return json_response({"error": errors}, status=400)
        self.fail_next(
            spec.kind,
            spec.count,
            match_to=spec.match_to,
            retry_after_s=spec.retry_after_s,
            hold_s=spec.hold_s,
        )
        return json_response({"pending": self.failures.pending()}, status=201)

    async def _delete_failures(self, request: web.Request) -> web.Response:
        self.failures.clear()
        return json_response({"pending": []})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"reset": True})
