"""``GET /whoami``: which token is calling and which project it may write.

The dashboard's login page needs an *authenticated* call to tell a valid token from a typo: on a
loopback server reads are open, so a read would accept any token. This route always needs one,
and it tells the dashboard the token's project scope so a project-scoped user sees only that
project there.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.api.deps import WriterDep
from server.wire import WireJSONResponse

router = APIRouter(tags=["auth"])


@router.get("/whoami")
def whoami(principal: WriterDep) -> Response:
    return WireJSONResponse({"token_id": principal.token_id, "project": principal.project})
