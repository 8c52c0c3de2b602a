"""``sqla-signed-urls``: the cache operations from a terminal or a cron job.

::

    sqla-signed-urls --app myapp.cache:service stats
    sqla-signed-urls --app myapp.cache:service stats --watch          # live; Ctrl-C quits
    sqla-signed-urls --redis-url redis://localhost:6379/1 history --json
    sqla-signed-urls --app myapp:create_service warm --file-type avatar --limit 5000
    sqla-signed-urls --app myapp.cache:service warm --since 2026-11-01T08:00
    sqla-signed-urls --redis-url redis://localhost:6379/1 clear --file-id 123
    sqla-signed-urls --app myapp.cache:service refresh --within 600   # from cron

Exit status: 0 on success, 2 on bad usage or configuration, 1 with a one-line error when Redis
or the database cannot be reached. Needs the ``cli`` extra (click and rich): importing this
module without them raises :class:`~sqla_signed_urls.ConfigurationError` naming
``pip install "sqla-signed-urls[cli]"``, which the console script prints as a one-line error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from ._extras import require

try:  # the `cli` extra
    import click
    import rich  # noqa: F401 - checked here, its parts are imported where they are used
except ImportError:
    require("click", "cli", "The sqla-signed-urls command")
    require("rich", "cli", "The sqla-signed-urls command")
    raise

from . import __version__
from .config import Settings
from .core import SignedURLs
from .exceptions import CacheError, ConfigurationError
from .service import CacheService, RedisOnlySigner
from .signers.base import Signer

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main"]

SINCE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
)
#: Commands that live in other modules, imported only when asked for.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("sqla_signed_urls.demo", "demo_command", "Run the demo workload."),
}


class _Group(click.Group):
    """A group whose heavier commands are imported only when listed or run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, attr, summary = LAZY_COMMANDS[cmd_name]
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ConfigurationError) as exc:
            return _unavailable(cmd_name, summary, exc)
        if not isinstance(command, click.Command):
            return _unavailable(cmd_name, summary, TypeError(f"{attr} is not a click command"))
        return command


def _unavailable(name: str, summary: str, exc: BaseException) -> click.Command:
    def run() -> None:
        _fail(f"the {name} command is not available in this installation ({exc})", 1)

    return click.Command(name, callback=run, help=summary, short_help=summary)


class _Target:
    """Where the commands point: an app (``--app``) or a bare Redis (``--redis-url``)."""

    def __init__(self, app: str | None, redis_url: str | None, key_prefix: str | None) -> None:
        self.app = app
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self._service: CacheService | None = None

    @property
    def redis_only(self) -> bool:
        return self.app is None

    def service(self) -> CacheService:
        if self._service is None:
            with _expected_faults():
                self._service = self._load()
        return self._service

    def _load(self) -> CacheService:
        if self.app is not None:
            if self.redis_url is not None:
                raise click.UsageError("give either --app or --redis-url, not both")
            return _coerce(_import_object(self.app), self.app)
        redis_url = self.redis_url or os.environ.get("REDIS_URL") or None
        if redis_url is None:
            raise click.UsageError(
                "tell me where the cache is: --app MODULE:OBJECT (a CacheService or a "
                "factory returning one), or --redis-url URL (or set REDIS_URL)"
            )
        overrides: dict[str, Any] = {"local_cache_size": 0}
        if self.key_prefix is not None:
            overrides["key_prefix"] = self.key_prefix
        if not os.environ.get("FILE_URL_REDIS_TIMEOUT"):
            overrides["socket_timeout"] = 5.0  # batch commands, not page views
        settings, _ = Settings.from_env(**overrides)
        urls = SignedURLs(_signer_from_env(), settings=settings, redis=redis_url)
        return CacheService(urls)


def _signer_from_env() -> Signer:
    """The signer the environment names (``S3_BUCKET``: S3, ``OSS_BUCKET``: OSS), so refresh
    and warm can sign; without either, none (stats and clear need no signer)."""
    from .signers.env import signer_from_env, store_in_env

    if store_in_env() is None:
        return RedisOnlySigner()
    return signer_from_env()


def _import_object(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{path!r}: expected MODULE:OBJECT", param_hint="'--app'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="'--app'"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no {attr!r}", param_hint="'--app'"
            ) from None
    return obj


def _coerce(obj: Any, path: str, *, called: bool = False) -> CacheService:
    """A CacheService from what ``--app`` names (or what its factory returns)."""
    if isinstance(obj, CacheService):
        return obj
    if isinstance(obj, SignedURLs):
        return CacheService(obj)
    extensions = getattr(obj, "extensions", None)  # a Flask app using FlaskSignedURLs
    if isinstance(extensions, dict) and "sqla_signed_urls" in extensions:
        service = getattr(extensions["sqla_signed_urls"], "service", None)
        if isinstance(service, CacheService):
            return service
    if callable(obj) and not called and not isinstance(obj, type):
        return _coerce(obj(), path, called=True)
    raise click.BadParameter(
        f"{path!r} is a {type(obj).__name__}; expected a CacheService, a SignedURLs or a "
        "factory returning one",
        param_hint="'--app'",
    )


class _Unreachable(click.ClickException):
    exit_code = 1


class _Misconfigured(click.ClickException):
    exit_code = 2


def _fail(message: str, code: int) -> NoReturn:
    kind = _Misconfigured if code == 2 else _Unreachable
    raise kind(" ".join(message.split()))


@contextlib.contextmanager
def _expected_faults() -> Iterator[None]:
    """Turn the faults an operator can fix into one-line errors with the right exit status."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except CacheError as exc:
        _fail(str(exc), 1)
    except DBAPIError as exc:
        lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
        _fail(f"database unavailable: {type(exc.orig).__name__}: {lines[0] if lines else ''}", 1)
    except ConfigurationError as exc:
        _fail(str(exc), 2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    "app",
    metavar="MODULE:OBJECT",
    envvar="SQLA_SIGNED_URLS_APP",
    help="A CacheService, a SignedURLs, a Flask app using FlaskSignedURLs, or a factory "
    "returning one (env SQLA_SIGNED_URLS_APP).",
)
@click.option(
    "--redis-url",
    metavar="URL",
    help="A bare Redis for stats, clear and refresh (default: REDIS_URL).",
)
@click.option(
    "--key-prefix",
    metavar="PREFIX",
    envvar="FILE_URL_CACHE_KEY_PREFIX",
    help="Key prefix with --redis-url (default: file_url:).",
)
@click.version_option(__version__, prog_name="sqla-signed-urls")
@click.pass_context
def main(
    ctx: click.Context, app: str | None, redis_url: str | None, key_prefix: str | None
) -> None:
    """Inspect and manage the signed-URL cache: stats, history, clear, warm and refresh."""
    target = _Target(app, redis_url, key_prefix)
    ctx.obj = target

    def flush() -> None:
        # Counters this process gathered (signings while warming) join the fleet totals.
        service = target._service
        if service is not None:
            with contextlib.suppress(Exception):
                service.urls.flush_stats()

    ctx.call_on_close(flush)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
@click.option(
    "--watch",
    is_flag=True,
    help="A live view, redrawn every few seconds, with sparklines of the last hour; Ctrl-C quits.",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two redraws with --watch.",
)
@click.pass_obj
def stats(target: _Target, as_json: bool, watch: bool, every: float) -> None:
    """Fleet-wide hit ratio, counters, keys and memory."""
    if watch and as_json:
        raise click.UsageError("--watch draws a view for people; use --json without it")
    service = target.service()
    if watch:
        _watch(service, every)
        return
    with _expected_faults():
        data = service.get_cache_stats()
    if as_json:
        click.echo(json.dumps(data, sort_keys=False))
        return
    from rich.console import Console

    console = Console()
    console.print(_where(data), markup=False, highlight=False)
    console.print(_stats_table(data))


def _where(data: dict[str, Any]) -> str:
    return f"URL cache {data['key_prefix']!r} on Redis db {data['redis_db']}"


def _stats_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in data.items():
        if name in ("key_prefix", "redis_db"):
            continue
        table.add_row(name, _human(name, value))
    return table


#: The rows of the live view's sparklines: (label, figure of a per-minute row, format).
_SPARK_ROWS: tuple[tuple[str, str, str], ...] = (
    ("hit ratio", "hit_ratio", "ratio"),
    ("hits / min", "hits", "rate"),
    ("misses / min", "misses", "rate"),
    ("signings / min", "signed", "rate"),
    ("invalidations / min", "invalidations", "rate"),
    ("errors / min", "errors", "rate"),
    ("breaker openings / min", "breaker_opened", "rate"),
    ("keys", "keys", "count"),
    ("memory", "memory_used_bytes", "bytes"),
)
_BLOCKS = "▁▂▃▄▅▆▇█"


def _watch(service: CacheService, every: float) -> None:
    """Redraw the live view every ``every`` seconds until Ctrl-C (exit status 0)."""
    import time

    from rich.live import Live

    console = _console()
    try:
        if not console.is_terminal:  # a pipe or a file: one frame per redraw, one after another
            while True:
                console.print(_watch_frame(service, every, console.width))
                console.file.flush()
                time.sleep(every)
        frame = _watch_frame(service, every, console.width)
        with Live(frame, console=console, auto_refresh=False) as live:
            while True:
                time.sleep(every)
                live.update(_watch_frame(service, every, console.width), refresh=True)
    except KeyboardInterrupt:
        return


def _console() -> Console:
    """A console; written to a pipe or a file it is as wide as a table of history needs."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=120)
    return console


def _watch_frame(service: CacheService, every: float, width: int = 120) -> Any:
    """One frame of the live view: the totals, then a sparkline of each figure over the last
    hour of history. A fault is shown in the frame; the next one tries again."""
    import time

    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .history import per_minute

    now = time.time()
    clock = time.strftime("%H:%M:%S UTC", time.gmtime(now))
    interval = service.urls.settings.history_interval
    try:
        data = service.get_cache_stats()
        points = service.get_cache_history(since=now - 3600 - interval)
    except CacheError as exc:
        return Text(f"{clock}  Error: {exc}\nTrying again in {every:g} s; Ctrl-C quits.")
    title = Text(f"{_where(data)} · {clock} · every {every:g} s · Ctrl-C quits")
    rates = [r for r in per_minute(points) if r["time"] >= now - 3600]
    spark = Table(title="last hour, from the history", title_justify="left")
    spark.add_column("figure")
    spark.add_column("latest", justify="right")
    spark.add_column("last hour", no_wrap=True, overflow="crop")
    columns = max(12, min(60, width - 62))
    spark.add_column("lowest", justify="right")
    spark.add_column("highest", justify="right")
    for label, name, kind in _SPARK_ROWS:
        source = points if kind in ("count", "bytes") else rates
        rows = [
            (r["time"], r["errors"] + r["sign_errors"] if name == "errors" else r[name])
            for r in source
            if r["time"] >= now - 3600
        ]
        known = [float(v) for _, v in rows if v is not None]
        if not known:
            spark.add_row(label, "n/a", "", "", "")
            continue
        spark.add_row(
            label,
            _figure(kind, known[-1]),
            _sparkline(rows, now - 3600, now, columns, top=1.0 if kind == "ratio" else None),
            _figure(kind, min(known)),
            _figure(kind, max(known)),
        )
    if not points:
        spark.caption = f"no history yet: one point every {interval:,} s while URLs are read"
    return Group(title, _stats_table(data), spark)


def _figure(kind: str, value: float) -> str:
    if kind == "ratio":
        return f"{value * 100:.1f} %"
    if kind == "bytes":
        return _human("memory_used_bytes", int(value))
    if kind == "count":
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _sparkline(
    rows: list[tuple[float, Any]],
    start: float,
    end: float,
    width: int = 60,
    top: float | None = None,
) -> str:
    """``(time, value)`` rows as ``width`` block characters from ``start`` to ``end`` (the
    newest on the right; values in one column averaged); a column without a value is a
    space."""
    columns: list[list[float]] = [[] for _ in range(width)]
    span = max(end - start, 1.0)
    for at, value in rows:
        if value is None or not start <= at <= end:
            continue
        columns[min(int((at - start) / span * width), width - 1)].append(float(value))
    means = [sum(c) / len(c) if c else None for c in columns]
    known = [v for v in means if v is not None]
    high = top if top is not None else max(known, default=0.0)
    out = []
    for value in means:
        if value is None:
            out.append(" ")
        elif high <= 0:
            out.append(_BLOCKS[0])
        else:
            share = min(max(value / high, 0.0), 1.0)
            out.append(_BLOCKS[min(int(share * len(_BLOCKS)), len(_BLOCKS) - 1)])
    return "".join(out)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=None,
    metavar="MINUTES",
    help="Only the points of the last MINUTES minutes (default: all that is kept).",
)
@click.pass_obj
def history(target: _Target, as_json: bool, last: int | None) -> None:
    """The fleet history: one point a minute of counters, keys and memory (times in UTC)."""
    import time

    from .history import per_minute

    service = target.service()
    since = time.time() - last * 60 if last is not None else None
    with _expected_faults():
        points = service.get_cache_history(since)
    interval = service.urls.settings.history_interval
    if as_json:
        click.echo(json.dumps({"interval": interval, "points": points}))
        return
    from rich.table import Table

    console = _console()
    if not points:
        click.echo(
            f"No history yet: one point is recorded every {interval:,} seconds while the "
            "fleet reads URLs."
        )
        return
    rates = {r["time"]: r for r in per_minute(points)}
    table = Table(
        title=f"{len(points):,} points, every {interval:,} s; hits to errors per minute, "
        "breaker openings in each interval",
        title_justify="left",
    )
    table.add_column("time (UTC)", no_wrap=True)
    for column in ("hit ratio", "hits", "misses", "signed", "invalidated", "errors"):
        table.add_column(column, justify="right", no_wrap=True)
    for column in ("breaker", "keys", "memory"):
        table.add_column(column, justify="right", no_wrap=True)
    for point in points:
        rate = rates.get(point["time"])
        cells = ["—"] * 7
        if rate is not None:
            ratio = rate["hit_ratio"]
            cells = [
                f"{ratio * 100:.1f} %" if ratio is not None else "n/a",
                f"{rate['hits']:,.1f}",
                f"{rate['misses']:,.1f}",
                f"{rate['signed']:,.1f}",
                f"{rate['invalidations']:,.1f}",
                f"{rate['errors'] + rate['sign_errors']:,.1f}",
                f"{rate['breaker_opened'] * rate['minutes']:,.0f}",
            ]
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(point["time"]))
        table.add_row(
            stamp,
            *cells,
            f"{point['keys']:,}",
            _human("memory_used_bytes", point["memory_used_bytes"]),
        )
    console.print(table)


def _human(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if name == "hit_ratio":
        return f"{value * 100:.1f} %"
    if name == "memory_used_bytes":
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
            size /= 1024
    return f"{value:,}" if isinstance(value, int) else str(value)


@main.command()
@click.option(
    "--file-id",
    type=click.IntRange(min=0),
    default=None,
    help="Clear one file's URL; without it every key under the prefix.",
)
@click.pass_obj
def clear(target: _Target, file_id: int | None) -> None:
    """Remove cached URLs (SCAN + UNLINK; other data in the db survives)."""
    service = target.service()
    with _expected_faults():
        count = service.clear_file_url_cache(file_id)
    noun = "URL" if count == 1 else "URLs"
    where = f" for file {file_id}" if file_id is not None else ""
    click.echo(f"Cleared {count:,} cached {noun}{where}.")


@main.command()
@click.option("--file-type", metavar="TYPE", help="Only rows with this file_type.")
@click.option(
    "--since",
    type=click.DateTime(formats=SINCE_FORMATS),
    default=None,
    metavar="DATE",
    help="Only rows created at or after this date or datetime, e.g. 2026-11-01 or "
    "2026-11-01T08:00 (needs a created_at column).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Newest rows to warm.",
)
@click.pass_obj
def warm(target: _Target, file_type: str | None, since: dt.datetime | None, limit: int) -> None:
    """Sign and cache the newest rows' URLs (needs --app: rows come from the database)."""
    if target.redis_only:
        raise click.UsageError("warm reads rows from the database: point me at it with --app")
    service = target.service()
    from rich.console import Console

    console = Console()
    with _expected_faults():
        if console.is_terminal:
            count = _warm_with_progress(service, console, file_type, since, limit)
        else:
            count = service.warm_file_url_cache(file_type, since=since, limit=limit)
    noun = "URL" if count == 1 else "URLs"
    kind = f" of type {file_type}" if file_type else ""
    click.echo(f"Warmed {count:,} {noun}{kind}.")


def _warm_with_progress(
    service: CacheService,
    console: Console,
    file_type: str | None,
    since: dt.datetime | None,
    limit: int,
) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    total = service._count_warmable(file_type, since=since, limit=limit)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("warming", total=total)
        count = service.warm_file_url_cache(
            file_type, since=since, limit=limit, progress=lambda n: progress.advance(task, n)
        )
    return count


@main.command()
@click.option(
    "--within",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="Renew entries whose cache lifetime ends within this many seconds.",
)
@click.pass_obj
def refresh(target: _Target, within: int) -> None:
    """Renew entries about to expire, so they stay cached another cache_ttl."""
    service = target.service()
    with _expected_faults():
        count = service.refresh_expired_urls(within)
    noun = "URL" if count == 1 else "URLs"
    click.echo(f"Refreshed {count:,} cached {noun} expiring within {within:,} seconds.")
    if isinstance(service.urls.signer, RedisOnlySigner):
        click.echo(
            "No signer (give --app, or set OSS_*): entries were only extended as far as "
            "their URLs allow, none re-signed.",
            err=True,
        )
