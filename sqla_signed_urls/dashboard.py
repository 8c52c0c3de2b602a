"""The cache dashboard: one server-rendered HTML page with inline SVG charts, its browser
sign-in (a session cookie and CSRF tokens) and its three operations, shared by the Flask
blueprint and the FastAPI router.

Pure Python and standard library: no template engine, no script, no font or stylesheet from
anywhere, so it works offline and under a ``Content-Security-Policy`` that allows nothing but
its own inline style. The framework glue turns a request into a :class:`PageRequest`, runs
:meth:`Dashboard.handle` (a generator that asks for what it needs from the service: statistics,
history, the expiry histogram, an operation) with :func:`drive` or :func:`adrive`, and sends the
:class:`Answer` back::

    dashboard = Dashboard(token, settings=urls.settings)
    answer = drive(dashboard.handle(page_request), call, faults)

Sessions are stateless, so every worker process accepts them: the cookie holds its expiry and a
random id, signed with a key derived from the admin token (changing the token ends every
session), and each form carries a CSRF token derived from the session id.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import html
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.exc import DBAPIError

from ._admin import FIELDS, MAX_BODY_BYTES, Refused, db_message
from .config import Settings
from .exceptions import CacheError, ConfigurationError
from .history import Point, per_minute, window_summary

__all__ = [
    "ACTIONS",
    "COOKIE",
    "Answer",
    "Dashboard",
    "PageRequest",
    "adrive",
    "drive",
]

log = logging.getLogger("sqla_signed_urls")

#: Name of the session cookie (its path is the dashboard's, so no other page receives it).
COOKIE = "sqla_signed_urls_session"
#: Seconds a sign-in lasts.
SESSION_SECONDS = 8 * 3600
#: What the dashboard's forms post to, under ``<prefix>/dashboard/``.
ACTIONS = ("sign-in", "sign-out", "clear", "warm", "refresh")
#: The hit ratio and signer calls avoided the cache aims for.
TARGET_HIT_RATIO = 0.80
TARGET_SIGNER_AVOIDED = 0.90
#: Time windows of the charts: query value -> (seconds, label).
WINDOWS = {"1h": (3600, "last hour"), "24h": (86_400, "last 24 hours")}
#: The most history points one page reads, and the most drawn per series.
MAX_READ = 3000
MAX_DRAWN = 480
#: The default refresh horizon and warm size of the forms (as the JSON API's).
DEFAULT_WITHIN = 600
DEFAULT_WARM_LIMIT = 1000

#: What the flow asks the framework glue for: a name and its arguments.
#: ``("stats", ())``, ``("history", (since, limit))``, ``("histogram", ())``,
#: ``("breaker", ())`` (whether Redis answers in this process), ``("clear", (file_id,))``,
#: ``("warm", (file_type, limit))``, ``("refresh", (within,))``.
Need = tuple[str, tuple[Any, ...]]
Flow = Generator[Need, Any, "Answer"]


@dataclasses.dataclass(frozen=True)
class PageRequest:
    """A dashboard request, as the glue sees it.

    ``action`` is ``""`` for the page, else one of :data:`ACTIONS`; ``base`` is the admin
    prefix as the browser sees it (``/api/admin/cache``); ``body`` the raw form body, or
    ``None`` when it was larger than the admin API accepts.
    """

    method: str
    action: str
    base: str
    query: Mapping[str, str]
    cookie: str | None
    body: bytes | None
    secure: bool


@dataclasses.dataclass
class Answer:
    """Status, HTML and headers (``Set-Cookie`` may come more than once)."""

    status: int
    body: str
    headers: list[tuple[str, str]]


def drive(
    flow: Flow, call: Callable[[str, tuple[Any, ...]], Any], faults: tuple[type[Exception], ...]
) -> Answer:
    """Run ``flow``, answering each need with ``call(name, args)``; a fault of the kinds in
    ``faults`` is handed back to the flow, which says what failed."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            need = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as done:
            answer: Answer = done.value
            return answer
        result, error = None, None
        try:
            result = call(*need)
        except faults as exc:
            error = exc


async def adrive(
    flow: Flow,
    call: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
    faults: tuple[type[Exception], ...],
) -> Answer:
    """:func:`drive` with an awaitable ``call``."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            need = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as done:
            answer: Answer = done.value
            return answer
        result, error = None, None
        try:
            result = await call(*need)
        except faults as exc:
            error = exc


# -- sessions -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Session:
    ident: str
    expires: int


class _Sessions:
    """Signed, expiring session cookies and the CSRF tokens bound to them."""

    def __init__(self, token: str) -> None:
        self._expected = hashlib.sha256(token.encode()).digest()
        self._key = hmac.new(
            token.encode(), b"sqla-signed-urls dashboard session", hashlib.sha256
        ).digest()

    def token_matches(self, given: str) -> bool:
        # Equal-length digests make the comparison constant-time whatever was sent.
        digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
        return bool(given.strip()) and hmac.compare_digest(digest, self._expected)

    def _mac(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, now: float) -> str:
        expires = int(now) + SESSION_SECONDS
        ident = secrets.token_urlsafe(18)
        signed = f"{expires}.{ident}"
        return f"{signed}.{self._mac('session:' + signed)}"

    def check(self, cookie: str | None, now: float) -> _Session | None:
        if not cookie or len(cookie) > 200:
            return None
        expires, _, rest = cookie.partition(".")
        ident, _, mac = rest.partition(".")
        if not (expires.isdigit() and ident and mac):
            return None
        expected = self._mac(f"session:{expires}.{ident}")
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        if int(expires) <= now:
            return None
        return _Session(ident, int(expires))

    def csrf(self, session: _Session) -> str:
        return self._mac("csrf:" + session.ident)

    def csrf_matches(self, session: _Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf(session).encode())


def _cookie(value: str, path: str, secure: bool, max_age: int) -> str:
    parts = [f"{COOKIE}={value}", f"Max-Age={max_age}", f"Path={path}", "HttpOnly"]
    parts.append("SameSite=Strict")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


# -- the flow -----------------------------------------------------------------------------------


class Dashboard:
    """The dashboard of one cache (one key prefix) behind one admin token.

    ``GET <prefix>/dashboard`` is the page (``?window=24h`` for a day instead of an hour), or
    the sign-in form without a valid session; the forms post to ``<prefix>/dashboard/<action>``
    (:data:`ACTIONS`). Answers: 200 pages; 303 after signing in; 401 with the sign-in form
    for a wrong token or a missing, forged or expired session; 403 for a missing or wrong
    CSRF token; 400 for a bad field; 413 for a body over 16 KiB; 503 when Redis or the
    database fails; nothing changes unless the answer says so.
    """

    def __init__(self, token: str, *, settings: Settings) -> None:
        self._sessions = _Sessions(token)
        self.key_prefix = settings.key_prefix
        self.interval = settings.history_interval
        self.history_points = settings.history_points
        self.cache_ttl = settings.cache_ttl

    def handle(self, req: PageRequest, now: float | None = None) -> Flow:
        """The answer to ``req``, asking the glue for what it needs (see :data:`Need`)."""
        now = time.time() if now is None else now
        page = _Page(self, req)
        if req.action == "sign-in":
            return self._sign_in(page, now)
        session = self._sessions.check(req.cookie, now)
        if session is None:
            if req.action == "" and not req.cookie:
                return page.sign_in(401)
            why = "sign in first" if not req.cookie else "your session has ended or is not valid"
            kept = "" if req.action == "" else ": nothing was changed"
            return page.sign_in(401, f"Not signed in ({why}){kept}.")
        page.csrf = self._sessions.csrf(session)
        if req.action == "":
            return (yield from self._dashboard(page, now))
        try:
            form = _parse_form(req.body)
        except Refused as exc:
            return page.message(exc.status, f"{exc.message}: nothing was changed.")
        if not self._sessions.csrf_matches(session, form.pop("csrf", None)):
            return page.message(
                403,
                "The form's CSRF token is missing or wrong: nothing was changed. Open the "
                "dashboard again and use its forms.",
            )
        if req.action == "sign-out":
            page.headers.append(("Set-Cookie", _cookie("", page.cookie_path, req.secure, 0)))
            log.info("cache dashboard: signed out")
            return page.sign_in(200, "Signed out.", kind="status")
        return (yield from self._operation(page, req.action, form, now))

    def _sign_in(self, page: _Page, now: float) -> Answer:
        try:
            form = _parse_form(page.req.body)
            given = form.pop("token", "")
            if form:
                raise Refused(f"unknown field {sorted(form)[0]!r}")
        except Refused as exc:
            return page.sign_in(exc.status, f"{exc.message}: not signed in.")
        if not self._sessions.token_matches(given):
            log.warning("cache dashboard: sign-in refused (wrong admin token)")
            return page.sign_in(401, "Wrong admin token: not signed in.")
        cookie = self._sessions.issue(now)
        page.headers.append(
            ("Set-Cookie", _cookie(cookie, page.cookie_path, page.req.secure, SESSION_SECONDS))
        )
        page.headers.append(("Location", page.href()))
        log.info("cache dashboard: signed in")
        return Answer(303, "", _security_headers() + page.headers)

    def _operation(self, page: _Page, action: str, form: dict[str, str], now: float) -> Flow:
        confirmed = form.pop("confirm", "") == "yes"
        try:
            args = _operation_args(action, form)
        except Refused as exc:
            return page.message(exc.status, f"{exc.message}: nothing was changed.")
        if not confirmed:
            return page.confirm(action, args)
        try:
            count = yield (action, args)
        except Exception as exc:
            status, message = _fault(exc)
            return page.message(status, f"{message}. The {action} did not complete.")
        done = _done(action, args, int(count))
        log.info("cache dashboard: %s", done)
        return (yield from self._dashboard(page, now, done=done))

    def _dashboard(self, page: _Page, now: float, done: str | None = None) -> Flow:
        seconds, _ = page.window
        data = _Data(now=now, start=now - seconds, interval=self.interval)
        problems: list[tuple[int, str]] = []
        for need, args in (
            ("stats", ()),
            ("history", (int(now - seconds - self.interval), MAX_READ)),
            ("histogram", ()),
            ("breaker", ()),
        ):
            if problems and need != "breaker":
                continue  # Redis failed once: no second wait for it on this page
            try:
                result = yield (need, args)
            except Exception as exc:
                problems.append(_fault(exc))
                continue
            setattr(data, need, result)
        status = max((s for s, _ in problems), default=200)
        return page.dashboard(data, status, done, [m for _, m in problems])


def _fault(exc: BaseException) -> tuple[int, str]:
    """The status and one line for a fault the glue handed back."""
    if isinstance(exc, CacheError):
        return 503, str(exc)
    if isinstance(exc, ConfigurationError):
        return 501, str(exc)
    if isinstance(exc, DBAPIError):  # the driver's first line, never the SQL
        return 503, f"database unavailable: {db_message(exc)}"
    raise exc


def _parse_form(body: bytes | None) -> dict[str, str]:
    """A urlencoded form body, each field once."""
    if body is None or len(body) > MAX_BODY_BYTES:
        raise Refused(f"form larger than {MAX_BODY_BYTES} bytes", status=413)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Refused("the form is not valid") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise Refused(f"field {name!r} given twice", field=name)
        form[name] = value
    return form


def _number(form: dict[str, str], name: str, default: int | None) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 19:
        raise Refused(f"{name} must be a whole number, got {raw[:40]!r}", field=name)
    value: int = FIELDS[name](int(raw))
    return value


def _operation_args(action: str, form: dict[str, str]) -> tuple[Any, ...]:
    allowed = {"clear": {"file_id"}, "warm": {"file_type", "limit"}, "refresh": {"within"}}
    unknown = sorted(set(form) - allowed[action])
    if unknown:
        raise Refused(f"unknown field {unknown[0]!r}", field=unknown[0])
    if action == "clear":
        return (_number(form, "file_id", None),)
    if action == "warm":
        file_type = form.get("file_type", "").strip()
        return (
            FIELDS["file_type"](file_type) if file_type else None,
            _number(form, "limit", DEFAULT_WARM_LIMIT),
        )
    return (_number(form, "within", DEFAULT_WITHIN),)


def _plural(count: int, noun: str = "cached URL") -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _done(action: str, args: tuple[Any, ...], count: int) -> str:
    if action == "clear":
        (file_id,) = args
        where = "" if file_id is None else f" for file {file_id}"
        return f"Cleared {_plural(count)}{where}."
    if action == "warm":
        file_type, _ = args
        kind = f" of type {file_type}" if file_type else ""
        return f"Warmed {_plural(count)}{kind}."
    (within,) = args
    return f"Refreshed {_plural(count)} expiring within {within:,} seconds."


# -- the data of one page -----------------------------------------------------------------------


@dataclasses.dataclass
class _Data:
    now: float
    start: float
    interval: int
    stats: dict[str, Any] | None = None
    history: list[Point] | None = None
    histogram: list[dict[str, Any]] | None = None
    breaker: bool | None = None

    @property
    def points(self) -> list[Point]:
        """The history points inside the window."""
        return [p for p in self.history or () if p["time"] >= self.start]

    @property
    def rates(self) -> list[Point]:
        """Per-minute figures of each point in the window (the point just before the window
        gives the first one its start)."""
        history = self.history or []
        before = [p for p in history if p["time"] < self.start][-1:]
        return [r for r in per_minute(before + self.points) if r["time"] >= self.start]

    def summary(self) -> Point | None:
        if self.stats is None:
            return None
        history = self.history or []
        before = [p for p in history if p["time"] < self.start][-1:]
        return window_summary(before + self.points, self.stats)


# -- rendering ----------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


_STYLE = """
:root{color-scheme:light;--ink:#1d232b;--muted:#5a6572;--line:#d7dde4;--ok:#106b3a;
--bad:#a1260d;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;justify-content:space-between;
padding:.8rem 1.5rem;background:#fff;border-bottom:1px solid var(--line)}
header h1{font-size:1.25rem;margin:0}
header p{margin:0;color:var(--muted)}
main{padding:1rem 1.5rem 3rem;max-width:1320px;margin:0 auto}
h2{font-size:1.1rem;margin:1.6rem 0 .6rem}
nav a{margin-right:.8rem}
nav a[aria-current]{font-weight:700;color:var(--ink);text-decoration:none}
.banner{padding:.6rem .9rem;border-radius:6px;margin:.8rem 0;border:1px solid var(--line);
background:#fff}
.banner.done{border-color:var(--ok);color:var(--ok)}
.banner.error{border-color:var(--bad);color:var(--bad)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:.8rem}
.card{background:#fff;border:1px solid var(--line);border-left:5px solid var(--line);
border-radius:6px;padding:.6rem .8rem}
.card.ok{border-left-color:var(--ok)}
.card.bad{border-left-color:var(--bad)}
.card h3{margin:0;font-size:.85rem;font-weight:600;color:var(--muted)}
.card .value{font-size:1.6rem;font-weight:700;margin:.1rem 0}
.card p{margin:0;font-size:.85rem}
.card.ok .verdict{color:var(--ok)}
.card.bad .verdict{color:var(--bad)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:.6rem}
figcaption{font-size:.85rem;color:var(--muted)}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:var(--muted)}
svg .title{font-size:13px;font-weight:600;fill:var(--ink)}
svg .grid{stroke:#e6eaee}
svg .axis{stroke:#98a2ad}
svg .target{stroke:var(--ok);stroke-dasharray:5 4}
svg .series{fill:none;stroke-width:2}
svg .series.s2{stroke-dasharray:6 3}
.s0{stroke:#1f6feb;fill:#1f6feb}.s1{stroke:#d1242f;fill:#d1242f}.s2{stroke:#8250df;fill:#8250df}
svg .bar{fill:#1f6feb}
svg .bar.soon{fill:#bf8700}
.key{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin:0 .3rem 0 .8rem;
vertical-align:-1px}
.key.s0{background:#1f6feb}.key.s1{background:#d1242f}.key.s2{background:#8250df}
.key.soon{background:#bf8700}
details{margin-top:.4rem;font-size:.85rem}
table{border-collapse:collapse;margin-top:.4rem}
th,td{padding:.15rem .6rem;border-bottom:1px solid var(--line);text-align:right}
th:first-child,td:first-child{text-align:left}
.empty{color:var(--muted);font-style:italic}
.actions{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:1rem}
form.op{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.8rem}
form.op h3{margin:0 0 .4rem;font-size:1rem}
label{display:block;font-size:.85rem;color:var(--muted);margin:.4rem 0 .2rem}
input{font:inherit;padding:.35rem .5rem;border:1px solid #b8c1cb;border-radius:4px;width:100%}
button{font:inherit;margin-top:.6rem;padding:.4rem .9rem;border-radius:4px;
border:1px solid #1f6feb;background:#1f6feb;color:#fff;cursor:pointer}
button.quiet{background:#fff;color:#1f6feb}
.signin{max-width:420px;margin:12vh auto;background:#fff;border:1px solid var(--line);
border-radius:8px;padding:1.5rem}
.signin h1{margin-top:0;font-size:1.3rem}
.confirm{max-width:640px;background:#fff;border:1px solid var(--line);border-radius:8px;
padding:1.2rem;margin:2rem auto}
.note{color:var(--muted);font-size:.85rem}
"""


@functools.cache
def _style_hash() -> str:
    digest = hashlib.sha256(_STYLE.encode()).digest()
    return "sha256-" + base64.b64encode(digest).decode()


def _security_headers() -> list[tuple[str, str]]:
    policy = (
        f"default-src 'none'; style-src '{_style_hash()}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    ]


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


class _Page:
    """Renders the pages of one request."""

    def __init__(self, dashboard: Dashboard, req: PageRequest) -> None:
        self.d = dashboard
        self.req = req
        self.base = req.base.rstrip("/")
        self.cookie_path = self.base + "/dashboard"
        self.csrf = ""
        self.headers: list[tuple[str, str]] = []
        key = req.query.get("window", "1h")
        self.window_key = key if key in WINDOWS else "1h"
        self.window = WINDOWS[self.window_key]

    def href(self, action: str = "", window: str | None = None) -> str:
        path = self.cookie_path + (f"/{action}" if action else "")
        return path + (f"?window={window}" if window else "")

    def answer(self, status: int, title: str, body: str) -> Answer:
        headers = _security_headers() + self.headers
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="cache admin"'))
        return Answer(status, _document(title, body), headers)

    # -- sign-in, messages, confirmation ---------------------------------------------------

    def sign_in(self, status: int, message: str | None = None, kind: str = "alert") -> Answer:
        note = ""
        if message:
            css = "error" if kind == "alert" else "done"
            note = f'<p class="banner {css}" role="{kind}" id="message">{_e(message)}</p>'
        body = (
            '<main class="signin"><h1>URL cache dashboard</h1>'
            f"{note}"
            f'<form method="post" action="{_e(self.href("sign-in"))}" id="sign-in">'
            '<label for="token">Admin token</label>'
            '<input type="password" id="token" name="token" autocomplete="current-password"'
            " required>"
            '<button type="submit">Sign in</button></form>'
            '<p class="note">The admin token (<code>ADMIN_TOKEN</code>) opens a session of '
            f"{SESSION_SECONDS // 3600} hours in this browser.</p></main>"
        )
        return self.answer(status, "Sign in: URL cache dashboard", body)

    def message(self, status: int, message: str) -> Answer:
        body = (
            f'<main class="confirm"><h1>URL cache dashboard</h1>'
            f'<p class="banner error" role="alert" id="message">{_e(message)}</p>'
            f'<p><a href="{_e(self.href())}">Back to the dashboard</a></p></main>'
        )
        return self.answer(status, "URL cache dashboard", body)

    def confirm(self, action: str, args: tuple[Any, ...]) -> Answer:
        if action == "clear":
            (file_id,) = args
            question = (
                f"Clear every cached URL under the prefix {self.d.key_prefix!r}?"
                if file_id is None
                else f"Clear the cached URLs of file {file_id}?"
            )
            fields = {"file_id": "" if file_id is None else str(file_id)}
            verb = "Clear"
        elif action == "warm":
            file_type, limit = args
            kind = f" of type {file_type!r}" if file_type else ""
            question = f"Sign and cache the URLs of the newest {limit:,} rows{kind}?"
            fields = {"file_type": file_type or "", "limit": str(limit)}
            verb = "Warm"
        else:
            (within,) = args
            question = f"Renew the cached URLs whose cache lifetime ends within {within:,} seconds?"
            fields = {"within": str(within)}
            verb = "Refresh"
        hidden = "".join(
            f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in fields.items()
        )
        body = (
            '<main class="confirm"><h1>Please confirm</h1>'
            f'<p id="question">{_e(question)}</p>'
            f'<form method="post" action="{_e(self.href(action))}" id="confirm-form">'
            f'<input type="hidden" name="csrf" value="{_e(self.csrf)}">{hidden}'
            '<input type="hidden" name="confirm" value="yes">'
            f'<button type="submit" id="confirm">{_e(verb)}</button> '
            f'<a href="{_e(self.href())}" id="cancel">Cancel</a></form></main>'
        )
        return self.answer(200, f"{verb}? URL cache dashboard", body)

    # -- the dashboard ---------------------------------------------------------------------

    def dashboard(self, data: _Data, status: int, done: str | None, problems: list[str]) -> Answer:
        _, label = self.window
        banners = ""
        if done:
            banners += f'<p class="banner done" role="status" id="result">{_e(done)}</p>'
        for problem in problems:
            banners += f'<p class="banner error" role="alert">{_e(problem)}</p>'
        nav = "".join(
            f'<a href="{_e(self.href(window=key))}"'
            + (' aria-current="page"' if key == self.window_key else "")
            + f">{_e(text.capitalize())}</a>"
            for key, (_, text) in WINDOWS.items()
        )
        header = (
            "<header><div><h1>URL cache dashboard</h1>"
            f"<p>Key prefix <code>{_e(self.d.key_prefix)}</code> · times in UTC · "
            f"updated {_e(_clock(data.now, seconds=True))}</p></div>"
            f'<nav aria-label="Time window">{nav}'
            f'<a href="{_e(self.href(window=self.window_key))}">Reload</a></nav>'
            f'<form method="post" action="{_e(self.href("sign-out"))}" id="sign-out">'
            f'<input type="hidden" name="csrf" value="{_e(self.csrf)}">'
            '<button type="submit" class="quiet">Sign out</button></form></header>'
        )
        body = (
            f"{header}<main>{banners}"
            f'<section aria-labelledby="h-now"><h2 id="h-now">Now, against the targets '
            f"({_e(label)})</h2>{self.cards(data)}</section>"
            f'<section aria-labelledby="h-charts"><h2 id="h-charts">Over the {_e(label)}</h2>'
            f'<div class="charts">{self.charts(data)}</div></section>'
            f'<section aria-labelledby="h-ops"><h2 id="h-ops">Operations</h2>'
            f'<div class="actions">{self.forms()}</div></section></main>'
        )
        return self.answer(status, "URL cache dashboard", body)

    def cards(self, data: _Data) -> str:
        summary = data.summary()
        stats = data.stats or {}
        _, label = self.window
        span = label if summary and summary["since"] is not None else "since the counters began"
        cards = []
        if summary is None:
            cards.append(_card("hit-ratio", "Hit ratio", "n/a", None, "Redis unavailable"))
        else:
            lookups = f"{summary['lookups']:,} URL reads, {span}"
            cards.append(
                _target_card(
                    "hit-ratio", "Hit ratio", summary["hit_ratio"], TARGET_HIT_RATIO, lookups
                )
            )
            signed = f"{summary['signed']:,} signings, {span}"
            cards.append(
                _target_card(
                    "signer-avoided",
                    "Signer calls avoided",
                    summary["signer_avoided"],
                    TARGET_SIGNER_AVOIDED,
                    signed,
                )
            )
        soon = _expiring_soon(data.histogram)
        keys_note = "live entries" + (f"; {soon:,} end within 10 min" if soon is not None else "")
        cards.append(_card("keys", "Cached keys", _count(stats.get("keys")), None, keys_note))
        memory = stats.get("memory_used_bytes")
        cards.append(
            _card(
                "memory",
                "Redis memory used",
                _bytes(memory),
                None,
                "whole server" if memory is not None else "not reported by this Redis",
            )
        )
        if summary is not None:
            errors = summary["errors"] + summary["sign_errors"]
            cards.append(
                _card(
                    "errors",
                    "Errors",
                    f"{errors:,}",
                    errors == 0,
                    f"{summary['errors']:,} Redis, {summary['sign_errors']:,} signing; {span}",
                )
            )
        breaker = data.breaker
        openings = summary["breaker_opened"] if summary is not None else None
        opened = f"opened {openings:,} times, {span}" if openings is not None else ""
        if breaker is None:
            cards.append(_card("breaker", "Circuit breaker", "n/a", None, opened))
        else:
            state = "closed" if breaker else "open"
            note = "Redis answers this process" if breaker else "Redis skipped: signing directly"
            cards.append(
                _card("breaker", "Circuit breaker", state, breaker, f"{note}; {opened}".strip("; "))
            )
        return f'<div class="cards">{"".join(cards)}</div>'

    def charts(self, data: _Data) -> str:
        rates = _thin(data.rates, MAX_DRAWN)
        points = _thin(data.points, MAX_DRAWN)
        start, end = data.start, data.now
        _, label = self.window
        gap = 3 * self.d.interval
        charts = [
            _line_chart(
                ident="hit-ratio",
                title=f"Hit ratio per minute, {label}",
                y_label="hit ratio (%)",
                rows=rates,
                series=[("hit_ratio", "hit ratio", 100.0)],
                start=start,
                end=end,
                gap=gap,
                y_max=100.0,
                unit="%",
                target=(TARGET_HIT_RATIO * 100, f"target {TARGET_HIT_RATIO:.0%}"),
            ),
            _line_chart(
                ident="traffic",
                title=f"Hits, misses and signings per minute, {label}",
                y_label="per minute",
                rows=rates,
                series=[
                    ("hits", "hits", 1.0),
                    ("misses", "misses", 1.0),
                    ("signed", "signings", 1.0),
                ],
                start=start,
                end=end,
                gap=gap,
            ),
            _line_chart(
                ident="invalidations",
                title=f"Invalidations per minute, {label}",
                y_label="per minute",
                rows=rates,
                series=[("invalidations", "invalidations", 1.0)],
                start=start,
                end=end,
                gap=gap,
            ),
            _line_chart(
                ident="faults",
                title=f"Errors and breaker openings per minute, {label}",
                y_label="per minute",
                rows=rates,
                series=[
                    ("errors", "Redis errors", 1.0),
                    ("sign_errors", "signing errors", 1.0),
                    ("breaker_opened", "breaker openings", 1.0),
                ],
                start=start,
                end=end,
                gap=gap,
            ),
            _line_chart(
                ident="keys",
                title=f"Cached keys, {label}",
                y_label="keys",
                rows=points,
                series=[("keys", "cached keys", 1.0)],
                start=start,
                end=end,
                gap=gap,
            ),
            _line_chart(
                ident="memory",
                title=f"Redis memory used, {label}",
                y_label="memory (MiB)",
                rows=points,
                series=[("memory_used_bytes", "memory used", 1 / 1024 / 1024)],
                start=start,
                end=end,
                gap=gap,
            ),
            _histogram(data.histogram, self.d.cache_ttl),
        ]
        note = ""
        if data.history is not None and not data.points:
            note = (
                '<p class="empty" id="no-history">No history in this window yet: one point is '
                f"recorded every {self.d.interval:,} seconds while the fleet serves URLs.</p>"
            )
        if self.d.history_points == 0:
            note = '<p class="empty">History is off here (history_points=0).</p>'
        return note + "".join(charts)

    def forms(self) -> str:
        csrf = f'<input type="hidden" name="csrf" value="{_e(self.csrf)}">'
        return (
            f'<form class="op" method="post" action="{_e(self.href("clear"))}" id="clear-form">'
            f"<h3>Clear</h3>{csrf}"
            '<label for="clear-file-id">File id (leave empty for every cached URL)</label>'
            '<input id="clear-file-id" name="file_id" inputmode="numeric" pattern="[0-9]*"'
            ' autocomplete="off">'
            '<button type="submit">Clear…</button></form>'
            f'<form class="op" method="post" action="{_e(self.href("warm"))}" id="warm-form">'
            f"<h3>Warm</h3>{csrf}"
            '<label for="warm-file-type">File type (optional)</label>'
            '<input id="warm-file-type" name="file_type" maxlength="64" autocomplete="off">'
            '<label for="warm-limit">Newest rows</label>'
            f'<input id="warm-limit" name="limit" inputmode="numeric" pattern="[0-9]*" '
            f'value="{DEFAULT_WARM_LIMIT}">'
            '<button type="submit">Warm…</button></form>'
            f'<form class="op" method="post" action="{_e(self.href("refresh"))}" '
            f'id="refresh-form"><h3>Refresh</h3>{csrf}'
            '<label for="refresh-within">Renew what ends within (seconds)</label>'
            f'<input id="refresh-within" name="within" inputmode="numeric" pattern="[0-9]*" '
            f'value="{DEFAULT_WITHIN}">'
            '<button type="submit">Refresh…</button></form>'
        )


# -- cards --------------------------------------------------------------------------------------


def _card(ident: str, title: str, value: str, ok: bool | None, note: str) -> str:
    css = "" if ok is None else (" ok" if ok else " bad")
    return (
        f'<div class="card{css}" id="card-{_e(ident)}"><h3>{_e(title)}</h3>'
        f'<p class="value">{_e(value)}</p><p>{_e(note)}</p></div>'
    )


def _target_card(ident: str, title: str, value: float | None, target: float, note: str) -> str:
    if value is None:
        return _card(ident, title, "n/a", None, f"target above {target:.0%}; no URL reads yet")
    ok = value > target
    verdict = "meets the target" if ok else "below the target"
    return (
        f'<div class="card {"ok" if ok else "bad"}" id="card-{_e(ident)}"><h3>{_e(title)}</h3>'
        f'<p class="value">{value:.1%}</p>'
        f'<p class="verdict">target above {target:.0%}: {verdict}</p><p>{_e(note)}</p></div>'
    )


def _expiring_soon(histogram: list[dict[str, Any]] | None) -> int | None:
    if histogram is None:
        return None
    return sum(
        int(b["keys"])
        for b in histogram
        if b["to_seconds"] is not None and b["to_seconds"] <= DEFAULT_WITHIN
    )


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def _bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def _clock(t: float, seconds: bool = False) -> str:
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.gmtime(t))


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


# -- charts -------------------------------------------------------------------------------------

_W, _H = 600, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 66, 16, 30, 46


def _thin(rows: list[Point], most: int) -> list[Point]:
    """At most ``most`` rows: consecutive ones merged (rates averaged by their length, the
    hit ratio recomputed, levels taken from the last) when there are more."""
    if len(rows) <= most:
        return rows
    size = math.ceil(len(rows) / most)
    merged: list[Point] = []
    for start in range(0, len(rows), size):
        group = rows[start : start + size]
        last = dict(group[-1])
        if "minutes" in last:
            minutes = sum(r["minutes"] for r in group)
            for name, value in last.items():
                if name in ("time", "minutes", "hit_ratio", "keys", "memory_used_bytes"):
                    continue
                if isinstance(value, (int, float)):
                    last[name] = sum(r[name] * r["minutes"] for r in group) / minutes
            lookups = last["hits"] + last["misses"]
            last["hit_ratio"] = last["hits"] / lookups if lookups else None
            last["minutes"] = minutes
        merged.append(last)
    return merged


def _nice(value: float) -> float:
    """A round number at least ``value`` (1, 2, 3, 4, 5, 6 or 8 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


def _number_label(value: float, unit: str = "") -> str:
    if value >= 100 or value == int(value):
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}".strip()


def _x_ticks(start: float, end: float) -> list[float]:
    span = end - start
    for minutes in (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440):
        if span / (minutes * 60) <= 6:
            break
    step = minutes * 60
    first = math.ceil(start / step) * step
    return [t for t in range(int(first), int(end) + 1, step)]


def _frame(ident: str, title: str, y_label: str, x_label: str) -> tuple[str, str]:
    """The opening of a chart's SVG (title, description slot, axis labels) and its end."""
    head = (
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" data-chart="{ident}">'
        f'<title id="{ident}-title">{_e(title)}</title>'
        f'<text class="title" x="{_LEFT}" y="18">{_e(title)}</text>'
        f'<text class="axis-label" x="{_LEFT + (_W - _LEFT - _RIGHT) / 2:.0f}" '
        f'y="{_H - 6}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text class="axis-label" transform="translate(14 {_TOP + (_H - _TOP - _BOTTOM) / 2:.0f})'
        f' rotate(-90)" text-anchor="middle">{_e(y_label)}</text>'
    )
    return head, "</svg>"


def _y_axis(top: float, unit: str) -> str:
    width = _W - _LEFT - _RIGHT
    height = _H - _TOP - _BOTTOM
    parts = []
    for i in range(5):
        value = top * i / 4
        y = _TOP + height - height * i / 4
        css = "axis" if i == 0 else "grid"
        parts.append(
            f'<line class="{css}" x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + width}" y2="{y:.1f}"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(_number_label(value, unit))}</text>"
        )
    return "".join(parts)


def _line_chart(
    *,
    ident: str,
    title: str,
    y_label: str,
    rows: Sequence[Point],
    series: Sequence[tuple[str, str, float]],
    start: float,
    end: float,
    gap: float,
    y_max: float | None = None,
    unit: str = "",
    target: tuple[float, str] | None = None,
) -> str:
    """A time chart: one polyline per series (broken where values are missing or points are
    far apart), a title, axis labels, and a table of the same figures under it."""
    width = _W - _LEFT - _RIGHT
    height = _H - _TOP - _BOTTOM
    values = {
        name: [None if r.get(name) is None else float(r[name]) * scale for r in rows]
        for name, _, scale in series
    }
    highest = max((v for vs in values.values() for v in vs if v is not None), default=0.0)
    top = y_max if y_max is not None else _nice(highest * 1.1 if highest else 1.0)
    span = max(end - start, 1.0)

    def x(t: float) -> float:
        return _LEFT + width * min(max((t - start) / span, 0.0), 1.0)

    def y(v: float) -> float:
        return _TOP + height - height * min(v / top, 1.0)

    head, tail = _frame(ident, title, y_label, "time (UTC)")
    parts = [head, _y_axis(top, unit)]
    for t in _x_ticks(start, end):
        parts.append(
            f'<line class="axis" x1="{x(t):.1f}" y1="{_TOP + height}" x2="{x(t):.1f}" '
            f'y2="{_TOP + height + 4}"/><text x="{x(t):.1f}" y="{_TOP + height + 17}" '
            f'text-anchor="middle">{_clock(t)}</text>'
        )
    if target is not None:
        value, label = target
        parts.append(
            f'<line class="target" x1="{_LEFT}" y1="{y(value):.1f}" x2="{_LEFT + width}" '
            f'y2="{y(value):.1f}"/><text x="{_LEFT + width - 4}" y="{y(value) - 4:.1f}" '
            f'text-anchor="end">{_e(label)}</text>'
        )
    times = [float(r["time"]) for r in rows]
    for index, (name, _, _) in enumerate(series):
        for segment in _segments(times, values[name], gap):
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in segment)
            parts.append(
                f'<polyline class="series s{index}" data-series="{_e(name)}" points="{coords}"/>'
            )
            if len(segment) == 1:
                t, v = segment[0]
                parts.append(f'<circle class="s{index}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5"/>')
    parts.append(tail)
    desc = _describe(rows, series, values, unit)
    svg = "".join(parts).replace(
        "</title>", f'</title><desc id="{ident}-desc">{_e(desc)}</desc>', 1
    )
    legend = "".join(
        f'<span class="key s{i}"></span>{_e(label)}' for i, (_, label, _) in enumerate(series)
    )
    return (
        f'<figure id="chart-{_e(ident)}">{svg}<figcaption>{legend}</figcaption>'
        f"{_table(ident, title, rows, series, values, unit)}</figure>"
    )


def _segments(
    times: list[float], values: list[float | None], gap: float
) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    previous: float | None = None
    for t, v in zip(times, values, strict=True):
        if v is None or (previous is not None and t - previous > gap):
            if current:
                segments.append(current)
            current = []
        if v is not None:
            current.append((t, v))
        previous = t
    if current:
        segments.append(current)
    return segments


def _describe(
    rows: Sequence[Point],
    series: Sequence[tuple[str, str, float]],
    values: dict[str, list[float | None]],
    unit: str,
) -> str:
    if not rows:
        return "No figures in this window yet."
    parts = [f"{len(rows)} points from {_clock(rows[0]['time'])} to {_clock(rows[-1]['time'])}."]
    for name, label, _ in series:
        known = [v for v in values[name] if v is not None]
        if known:
            parts.append(
                f"{label}: latest {_number_label(known[-1], unit)}, lowest "
                f"{_number_label(min(known), unit)}, highest {_number_label(max(known), unit)}."
            )
    return " ".join(parts)


def _table(
    ident: str,
    title: str,
    rows: Sequence[Point],
    series: Sequence[tuple[str, str, float]],
    values: dict[str, list[float | None]],
    unit: str,
) -> str:
    if not rows:
        return f'<p class="empty" id="{ident}-empty">No figures in this window yet.</p>'
    head = "".join(f'<th scope="col">{_e(label)}</th>' for _, label, _ in series)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            "<td>—</td>"
            if values[name][i] is None
            else f"<td>{_e(_number_label(values[name][i] or 0.0, unit))}</td>"
            for name, _, _ in series
        )
        body.append(f'<tr><th scope="row">{_stamp(row["time"])}</th>{cells}</tr>')
    return (
        f"<details><summary>The figures as a table</summary>"
        f'<table id="{ident}-table"><caption>{_e(title)}</caption>'
        f'<thead><tr><th scope="col">time (UTC)</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></details>"
    )


def _minutes(seconds: int) -> str:
    return f"{seconds // 60}" if seconds % 60 == 0 else f"{seconds / 60:.1f}".rstrip("0")


def _bucket_label(low: int, high: int | None) -> str:
    if high is None:
        return f"≥ {_minutes(low)}"
    return f"{_minutes(low)}\u2013{_minutes(high)}"


def _histogram(buckets: list[dict[str, Any]] | None, cache_ttl: int) -> str:
    ident = "expiry"
    title = "Cached entries by time left"
    head, tail = _frame(ident, title, "entries", "minutes of cache lifetime left")
    width = _W - _LEFT - _RIGHT
    height = _H - _TOP - _BOTTOM
    buckets = buckets or []
    highest = max((b["keys"] for b in buckets), default=0)
    top = _nice(highest * 1.1 if highest else 1.0)
    parts = [head, _y_axis(top, "")]
    band = width / max(len(buckets), 1)
    for i, bucket in enumerate(buckets):
        keys = bucket["keys"]
        bar = height * min(keys / top, 1.0)
        left = _LEFT + band * i + band * 0.12
        soon = bucket["to_seconds"] is not None and bucket["to_seconds"] <= DEFAULT_WITHIN
        label = _bucket_label(bucket["from_seconds"], bucket["to_seconds"])
        parts.append(
            f'<rect class="bar{" soon" if soon else ""}" x="{left:.1f}" '
            f'y="{_TOP + height - bar:.1f}" width="{band * 0.76:.1f}" height="{bar:.1f}" '
            f'data-keys="{keys}"/><text x="{_LEFT + band * (i + 0.5):.1f}" '
            f'y="{_TOP + height + 17}" text-anchor="middle">{_e(label)}</text>'
        )
    parts.append(tail)
    total = sum(b["keys"] for b in buckets)
    soon_total = _expiring_soon(buckets) or 0
    desc = (
        f"{total:,} cached entries in {len(buckets)} buckets of time left; {soon_total:,} "
        f"end within {DEFAULT_WITHIN // 60} minutes, which refresh --within {DEFAULT_WITHIN} "
        "renews."
        if buckets
        else "The expiry index could not be read."
    )
    svg = "".join(parts).replace(
        "</title>", f'</title><desc id="{ident}-desc">{_e(desc)}</desc>', 1
    )
    rows = "".join(
        f'<tr><th scope="row">{_e(_bucket_label(b["from_seconds"], b["to_seconds"]))}</th>'
        f"<td>{b['keys']:,}</td></tr>"
        for b in buckets
    )
    table = (
        "<details><summary>The figures as a table</summary>"
        f'<table id="{ident}-table"><caption>{_e(title)} (cache_ttl {cache_ttl:,} s)</caption>'
        '<thead><tr><th scope="col">minutes left</th><th scope="col">entries</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></details>"
        if buckets
        else f'<p class="empty" id="{ident}-empty">{_e(desc)}</p>'
    )
    legend = (
        f'<span class="key s0"></span>entries <span class="key soon"></span>end within '
        f"{DEFAULT_WITHIN // 60} minutes (what refresh renews by default)"
    )
    return f'<figure id="chart-{ident}">{svg}<figcaption>{legend}</figcaption>{table}</figure>'
