"""The access log without secrets: ``token``-like query parameters are written as ``[redacted]``.

Clients should send tokens in the ``Authorization`` header, but a token pasted into a URL
(``?token=...``) must not end up in log files that are shipped and kept. uvicorn's access record
carries the path with its query string as the third argument; the filter rewrites it.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

SECRET_PARAMS = ("token", "access_token", "authorization", "auth", "api_key", "apikey", "password", "secret")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&;#\s]*")
REDACTED = "[redacted]"


def redact_url(url: str) -> str:
    """``url`` with the values of secret-looking query parameters replaced (names are kept)."""
    return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, url)


class RedactSecrets(logging.Filter):
    """Filter for ``uvicorn.access`` handlers (and any record with a URL among its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact_url(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_url(record.msg)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config with :class:`RedactSecrets` on every handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": RedactSecrets}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    return config
