"""The read client's HTTP session: one ``httpx.Client`` and errors a person can act on.

A notebook or a shell user sees one line per failure (server down, token refused, unknown run)
instead of an httpx traceback, so every non-2xx answer becomes an :class:`ApiError` whose message
names the server and what to do.
"""

from __future__ import annotations

from typing import Any, Mapping

import httpx

from probe.client.config import ClientConfig

_NO_TOKEN_HINT = "pass --token / token=... or set OPTISCOPE_TOKEN"


class ApiError(Exception):
    """A request the server refused or could not answer; ``status`` is the HTTP code (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:200] or response.reason_phrase
    if isinstance(detail, list):  # pydantic: name the bad field(s)
        parts = []
        for item in detail[:3]:
            loc = ".".join(str(p) for p in item.get("loc", []) if p not in ("query", "body"))
            parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts)
    return str(detail)


class HttpSession:
    """Base URL, token and one connection pool; ``close()`` (or ``with``) releases it."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        config = ClientConfig.from_env(url, token)
        self.url = config.url
        self.token = config.token
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.client = httpx.Client(base_url=config.api, headers=headers, timeout=timeout)
        """The configured ``httpx.Client`` (base URL ``<url>/api/v1``, bearer token set)."""

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: Any = None, content: bytes | None = None,
                headers: Mapping[str, str] | None = None, json: Any = None) -> httpx.Response:
        """Send one request; any transport failure or non-2xx answer raises :class:`ApiError`."""
        try:
            response = self.client.request(method, path, params=params, content=content,
                                     headers=headers, json=json)
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the Optiscope server at {self.url} "
                           "(is `optiscope serve` running? pass --url or set OPTISCOPE_URL)") from None
        except httpx.TimeoutException:
            raise ApiError(f"the Optiscope server at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"request to {self.url} failed: {exc}") from None
        if response.status_code < 300:
            return response
        status = response.status_code
        if status == 401:
            hint = _NO_TOKEN_HINT if not self.token else "the token is unknown or revoked; " + _NO_TOKEN_HINT
            raise ApiError(f"the server at {self.url} refused the request (401): {hint}", status)
        if status == 403:
            raise ApiError(f"forbidden (403): {_detail(response)}", status)
        raise ApiError(f"{_detail(response)} (HTTP {status} from {self.url})", status)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` and return the decoded JSON (``None`` values are left out of the query)."""
        query = [(k, v) for k, v in params.items() if v is not None and not isinstance(v, (list, tuple))]
        for k, v in params.items():
            if isinstance(v, (list, tuple)):
                query.extend((k, item) for item in v)
        return self.request("GET", path, params=query).json()
