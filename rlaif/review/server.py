"""The review page's server: a Starlette app over one opened output folder.

A small JSON API (``/api/...``) and the static page (``static/``: plain HTML, JS and CSS, no
build step). The page is served to one machine by default, and the server guards that:

- **On 127.0.0.1** only requests addressed to ``127.0.0.1``/``localhost`` are served (the Host
  header), so a web page the person visits elsewhere cannot reach the server through a DNS name
  that points at 127.0.0.1.
- **On any other host** every request must carry the random token printed at start (the
  ``token`` query parameter of the printed address, then a cookie, or an ``X-Review-Token``
  header), compared in constant time. Anyone else on the network gets 403.
- **Writes are JSON only.** A label is a POST with ``Content-Type: application/json``, which a
  form on another site cannot send without the browser asking first, and the server never
  answers such a question.

The server writes only the label file; the datasets are read once, at start.
"""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlaif.review import agreement
from rlaif.review.folder import ReviewFolder
from rlaif.review.rows import ANSWERS, Filters, ai_view, details, questions

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE = "rlaif_review_token"
TOKEN_HEADER = "x-review-token"
MAX_NAME = 80
MAX_NOTE = 4000


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_ok(request: Request, token: str) -> bool:
    """Whether a request carries ``token`` (header, query parameter or cookie)."""
    for given in (
        request.headers.get(TOKEN_HEADER),
        request.query_params.get("token"),
        request.cookies.get(TOKEN_COOKIE),
    ):
        if given and secrets.compare_digest(given.encode(), token.encode()):
            return True
    return False


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _TokenGuard(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        if not token_ok(request, self.token):
            return _error(403, "this review server needs the token it printed at start")
        response = await call_next(request)
        if request.query_params.get("token"):  # the printed address: later requests by cookie
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _filters(request: Request) -> Filters:
    q = request.query_params
    return Filters(
        dataset=q.get("dataset") or None,
        kind=q.get("kind") or None,
        principle=q.get("principle") or None,
        flags=[f for f in q.getlist("flag") if f],
        soft_min=_float(q.get("soft_min")),
        soft_max=_float(q.get("soft_max")),
        flips=q.get("flips") == "1",
        failed=q.get("failed") == "1",
        q=q.get("q", ""),
    )


def create_app(rf: ReviewFolder, token: str | None = None, local: bool = True) -> Starlette:
    """The app; ``token`` guards every request when given, ``local`` checks the Host header."""

    def answered(labeler: str | None) -> dict[tuple[str, str], dict[str, dict[str, str]]]:
        mine: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        if labeler:
            for lab in rf.store.current(labeler):
                mine.setdefault((lab.dataset, lab.row_id), {})[lab.question] = {
                    "answer": lab.answer, "note": lab.note}  # fmt: skip
        return mine

    def reveal(mine: dict[str, dict[str, str]], asked: list[str]) -> bool:
        first = mine.get(asked[0]) if asked else None
        return bool(first and first["answer"] != "skip")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def meta(request: Request) -> Response:
        counts = Counter(it.dataset for it in rf.items)
        return JSONResponse({
            "folder": str(rf.folder),
            "datasets": [{"name": d.name, "kind": d.kind, "path": str(d.path),
                          "rows": counts[d.name]} for d in rf.datasets],
            "principles": sorted({p for it in rf.items for p in it.principles}),
            "flags": sorted({f for it in rf.items for f in it.flags}),
            "kinds": sorted({it.kind for it in rf.items}),
            "shown": len(rf.items), "total": rf.total,
            "sample": rf.sample_size, "seed": rf.seed, "labelers": rf.store.labelers(),
        })  # fmt: skip

    async def rows(request: Request) -> Response:
        f = _filters(request)
        mine = answered(request.query_params.get("labeler"))
        out = []
        for it in rf.items:
            if f.match(it):
                done = mine.get(it.key, {})
                out.append({**it.summary(), "mine": {q: v["answer"] for q, v in done.items()}})
        return JSONResponse({"rows": out, "count": len(out)})

    async def row(request: Request) -> Response:
        key = (request.query_params.get("dataset", ""), request.query_params.get("id", ""))
        it = rf.by_key.get(key)
        if it is None:
            return _error(404, f"no row {key[1]!r} in dataset {key[0]!r}")
        mine = answered(request.query_params.get("labeler")).get(key, {})
        body = details(it, reveal=reveal(mine, questions(it)))
        return JSONResponse({**body, "mine": mine})

    async def add_label(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "labels are sent as application/json")
        try:
            data = await request.json()
        except ValueError:
            return _error(400, "not JSON")
        if not isinstance(data, dict):
            return _error(400, "send a JSON object")
        key = (str(data.get("dataset", "")), str(data.get("id", "")))
        it = rf.by_key.get(key)
        question, answer = str(data.get("question", "")), str(data.get("answer", ""))
        labeler = " ".join(str(data.get("labeler", "")).split())
        note = str(data.get("note", ""))
        if it is None or not it.labelable:
            return _error(404, f"no row to label: {key[1]!r} in dataset {key[0]!r}")
        asked = questions(it)
        if question not in asked or answer not in ANSWERS[question]:
            return _error(400, f"question {question!r} takes one of {ANSWERS.get(question)}")
        if not labeler or len(labeler) > MAX_NAME:
            return _error(400, f"give your name (1 to {MAX_NAME} characters)")
        if len(note) > MAX_NOTE:
            return _error(400, f"a note holds at most {MAX_NOTE} characters")
        lab = rf.store.add(key[0], key[1], question, answer, labeler, note)
        mine = answered(labeler).get(key, {})
        ai = ai_view(it) if reveal(mine, asked) else None
        return JSONResponse({"label": lab.__dict__, "ai": ai, "mine": mine})

    async def agree(request: Request) -> Response:
        return JSONResponse(agreement.summary(rf.by_key, rf.store.current()))

    middleware = []
    if local:
        hosts = ["127.0.0.1", "localhost", "[::1]"]
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    if token:
        middleware.append(Middleware(_TokenGuard, token=token))
    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/meta", meta),
            Route("/api/rows", rows),
            Route("/api/row", row),
            Route("/api/labels", add_label, methods=["POST"]),
            Route("/api/agreement", agree),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
    )


def serve(app: Starlette, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
