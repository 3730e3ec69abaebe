"""``GET /reports/{token}``: download a stored report file through a signed link.

Public (no endpoint token): the link's signature is the credential. Answers are JSON errors
with distinct statuses so a person or a script can tell what went wrong: 403 for a link this
server did not sign (tampered, truncated), 410 for one that has expired or whose file has been
deleted, 503 when no master secret is configured. The token never appears in a log line.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from .catalog import registry
from .files import find_file, iter_file
from .links import PATH_PREFIX, signer_for

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=status, headers={"Cache-Control": "no-store"}
    )


@registry.http_setup(public_prefixes=[PATH_PREFIX])
def add_routes(app: web.Application, state: HandlerState) -> None:
    async def download(request: web.Request) -> web.StreamResponse:
        signer = signer_for(state.settings.signing_key)
        if signer is None:
            return _error(503, "report links are not configured on this server")
        verdict = signer.verify(request.match_info["token"], time.time())
        if verdict.status == "invalid" or verdict.file_id is None:
            return _error(403, "invalid link")
        if verdict.status == "expired":
            return _error(410, "this link has expired; request the report again")
        file = await find_file(state.db, verdict.file_id)
        if file is None:
            return _error(410, "this report is no longer available; request it again")
        response = web.StreamResponse(
            headers={
                "Content-Type": file.media_type,
                "Content-Disposition": f'attachment; filename="{file.filename}"',
                "Cache-Control": "private, no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            }
        )
        response.content_length = file.byte_size
        await response.prepare(request)
        async for chunk in iter_file(state.db, file):
            await response.write(chunk)
        await response.write_eof()
        log.info("served report file %d (%d bytes)", file.id, file.byte_size)
        return response

    app.router.add_get(PATH_PREFIX + "{token}", download)
