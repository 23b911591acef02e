"""API tokens: random secrets, stored as sha256 hashes, optionally scoped to one project."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import utcnow
from server.models import ApiToken

TOKEN_PREFIX = "osk_"
LOCAL_TOKEN_NAME = "local"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id and project scope (None = all projects)."""

    token_id: int
    project: str | None

    def may_write(self, project: str) -> bool:
        return self.project is None or self.project == project


MIN_GIVEN_TOKEN_LENGTH = 24


def create_token(
    *, session: Session, name: str = "", project: str | None = None, plain: str | None = None
) -> tuple[ApiToken, str]:
    """Make a token; returns the row and the plaintext (shown once, never stored).

    ``plain`` registers a secret chosen in advance (a deployment's ``$OPTISCOPE_TOKEN``) instead of
    minting one; registering the same secret again returns the existing row, so deploy scripts can
    run it on every start.
    """
    if plain is None:
        plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    else:
        if len(plain) < MIN_GIVEN_TOKEN_LENGTH or any(c.isspace() for c in plain):
            raise ValueError(
                f"token: must be at least {MIN_GIVEN_TOKEN_LENGTH} characters without whitespace"
            )
        existing = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(plain)))
        if existing is not None and existing.revoked_at is None:
            return existing, plain
    row = ApiToken(name=name, token_hash=hash_token(plain), prefix=plain[:10], project=project)
    session.add(row)
    session.commit()
    return row, plain


def verify_token(*, session: Session, token: str) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, project=row.project)


def list_tokens(*, session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(*, session: Session, token_id: int) -> bool:
    row = session.get(ApiToken, token_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return True


def ensure_local_token(*, session: Session, home: Path) -> str:
    """Reuse ``$home/local-token`` if it is still valid, else mint one and write it (0600)."""
    path = Path(home) / "local-token"
    if path.exists():
        plain = path.read_text().strip()
        if plain and verify_token(session=session, token=plain) is not None:
            return plain
    _row, plain = create_token(session=session, name=LOCAL_TOKEN_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(plain + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return plain
