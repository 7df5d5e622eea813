"""/v1/artifacts: downloading what a stage recorded (listed per job under /v1/jobs/{id}/artifacts)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from service.api.deps import AUTH_ERRORS, NOT_FOUND, READ
from service.services import artifacts
from service.services.jobs import NotFound

router = APIRouter(prefix="/v1", tags=["artifacts"], responses=AUTH_ERRORS)
BINARY = {"schema": {"type": "string", "format": "binary"}}


class OctetStream(Response):
    media_type = "application/octet-stream"


def _attachment(name: str) -> str:
    # a name recorded by a stage may hold quotes or non-ASCII: give an ASCII fallback and the exact UTF-8 name
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/artifacts/{artifact_id}/download", dependencies=[READ], response_class=OctetStream,
            responses={**NOT_FOUND, 200: {"description": "the file, or a directory as a tar stream",
                                          "content": {"application/octet-stream": BINARY, "application/x-tar": BINARY}}})
def download_artifact(request: Request, artifact_id: str):
    """A file as is; a directory (checkpoint, Hugging Face model) as a tar stream. Always sent as an
    attachment of a binary type, so a recorded file never renders as a page of this origin."""
    a = artifacts.get(request.app.state.db, artifact_id)
    path = Path(a.path)
    if path.resolve() != path:  # stored resolved: a link put in its place since is not followed
        raise NotFound(f"artifact {artifact_id}: {a.path} was replaced by a link; not served")
    headers = {"X-Content-Type-Options": "nosniff"}
    if path.is_file():
        return FileResponse(path, media_type="application/octet-stream",
                            headers={**headers, "Content-Disposition": _attachment(path.name)})
    if path.is_dir():
        return StreamingResponse(artifacts.tar_stream(path), media_type="application/x-tar",
                                 headers={**headers, "Content-Disposition": _attachment(path.name + ".tar")})
    raise NotFound(f"artifact {artifact_id}: {a.path} no longer exists on the server")
