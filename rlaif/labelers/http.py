"""JSON over HTTP: the whole of what an online request to an OpenAI-compatible server needs.

An online chat completion is one POST of a JSON body and one JSON answer. Going through the
openai SDK for that cost, at a few hundred requests a second, more than the rest of rlaif: its
import (the whole typed API, ~0.7 s before the first request) and, per request, an httpx request
built over an aiohttp transport and a pydantic model of the answer. This client posts the body
rlaif already built with one aiohttp session per server and hands back the decoded JSON; the
readers in ``labelers/openai.py`` take the same plain dicts from a batch's result file, so online
and batch answers are read by one function. Batch mode (files, batches) stays on the SDK.

Every failure becomes one ``HttpError`` that says what happened (``kind``): the server answered
with an error status, no connection could be made, the request timed out, the connection broke,
or the body was not JSON. ``classify_http_error`` turns it into the retry ``Verdict`` the SDK
errors get (``reliability.classify_sdk_error``), with the same reasons, so the engine cannot tell
the two paths apart.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from rlaif.errors import BackendUnavailableError, LabelerResponseError
from rlaif.labelers.reliability import Verdict, server_says, status_verdict

Kind = Literal["status", "connect", "timeout", "connection", "unparsable"]


class HttpError(Exception):
    """A request that did not give a usable JSON answer; ``kind`` says why."""

    def __init__(
        self,
        kind: Kind,
        url: str,
        detail: str = "",
        status: int | None = None,
        headers: Any = None,
        body: Any = None,
        text: str | None = None,
    ):
        super().__init__(f"{kind}: {url}: {detail or status}")
        self.kind = kind
        self.url = url
        self.detail = detail
        self.status = status
        self.headers = headers
        self.body = body
        self.text = text


class JsonClient:
    """POSTs JSON to one server over one aiohttp session (keep-alive, up to ``limit``
    connections), created on first use inside the running event loop and bound to it."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float, limit: int):
        self.base_url = base_url.rstrip("/")
        self._headers = {**headers, "Content-Type": "application/json"}
        self._timeout = timeout
        self._limit = limit
        self._session: Any = None

    def _open(self) -> Any:
        if self._session is None:
            try:
                import aiohttp
            except ImportError:
                raise BackendUnavailableError(
                    "the openai backend needs aiohttp: pip install 'rlaif[api]'"
                ) from None
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                trust_env=True,  # HTTPS_PROXY, HTTP_PROXY and NO_PROXY, as the SDKs honour them
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=self._limit),
            )
        return self._session

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        import aiohttp

        session = self._open()
        url = self.base_url + path
        try:
            async with session.post(url, data=json.dumps(body).encode("utf-8")) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except aiohttp.ClientConnectorError as e:
            raise HttpError("connect", url, str(e)) from e
        except TimeoutError as e:
            raise HttpError("timeout", url) from e
        except aiohttp.ClientError as e:
            raise HttpError("connection", url, f"{type(e).__name__}: {e}") from e
        text = raw.decode("utf-8", errors="replace")
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
            if status < 400:
                raise HttpError("unparsable", url, "the body is not JSON", status) from None
        if status >= 400:
            said = decoded.get("error", decoded) if isinstance(decoded, dict) else decoded
            raise HttpError("status", url, "", status, headers, said, text)
        return decoded

    def is_closed(self) -> bool:
        return self._session is None or self._session.closed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def classify_http_error(exc: BaseException) -> Verdict:
    """Retry or not, and why, for a ``JsonClient`` request (the SDK errors' verdicts)."""
    if isinstance(exc, LabelerResponseError):
        return Verdict(True, f"bad response: {exc}")
    if not isinstance(exc, HttpError):
        if isinstance(exc, asyncio.TimeoutError):
            return Verdict(True, "timed out")
        return Verdict(False, f"{type(exc).__name__}: {exc}")
    url = exc.url
    if exc.kind == "status":
        said = server_says(exc.body, exc.text)
        return status_verdict(exc.status or 0, url, said, exc.headers, body=exc.body)
    if exc.kind == "connect":
        # nothing listens there, or the host is unknown: no request to it can succeed
        return Verdict(True, f"cannot connect to {url}: {exc.detail}", permanent=True)
    if exc.kind == "timeout":
        return Verdict(True, f"timed out: {url}")
    if exc.kind == "connection":
        return Verdict(True, f"connection problem with {url}: {exc.detail}")
    return Verdict(True, f"unparsable response from {url}: {exc.detail}")
