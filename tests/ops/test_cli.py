"""The ``sqla-signed-urls`` command: output, exit codes, one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import DateTime, Engine, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import CacheService, ObjectKey, SignedURLs, cli
from sqla_signed_urls.cache.base import encode_entry, signer_tag
from sqla_signed_urls.cli import main

from ..conftest import File, add_files, cache_files

SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sqla-signed-urls"
UNREACHABLE = "redis://127.0.0.1:1/0"

# What --app points at: the test's service (set by the fixture below).
_current: dict[str, Any] = {}
NOT_A_SERVICE = "just a string"


def current_service() -> CacheService:
    service: CacheService = _current["service"]
    return service


def current_urls() -> SignedURLs:
    urls: SignedURLs = _current["service"].urls
    return urls


def current_flask_app() -> Any:
    return _current["flask_app"]


def broken_service() -> CacheService:
    service: CacheService = _current["broken"]
    return service


@pytest.fixture
def service(urls: SignedURLs, db: sessionmaker[Session]) -> Iterator[CacheService]:
    svc = CacheService(urls, session_factory=db, model=File)
    _current["service"] = svc
    yield svc
    _current.clear()


class DatedBase(DeclarativeBase):
    pass


class DatedFile(DatedBase):
    __tablename__ = "cli_dated_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


@pytest.fixture
def dated_service(engine: Engine, make_urls: Any) -> Iterator[CacheService]:
    """A service on a model with ``created_at``, for ``warm --since``."""
    DatedBase.metadata.create_all(engine)
    urls = make_urls(local_cache_size=0)
    urls.install(DatedBase)
    db = sessionmaker(engine, expire_on_commit=False)
    with db() as session:
        session.add_all(
            DatedFile(id=i, object_key=f"d{i}", created_at=created) for i, created in DATED_ROWS
        )
        session.commit()
    svc = CacheService(urls, session_factory=db, model=DatedFile)
    _current["service"] = svc
    yield svc
    _current.clear()
    DatedBase.metadata.drop_all(engine)


DATED_ROWS = [
    (1, dt.datetime(2026, 10, 31, 23, 59, 59)),
    (2, dt.datetime(2026, 11, 1, 0, 0)),
    (3, dt.datetime(2026, 11, 1, 8, 0)),
    (4, dt.datetime(2026, 11, 2, 12, 30)),
]


def cached_ids(redis_client: Any, key_prefix: str) -> set[int]:
    keys = (key.decode() for key in redis_client.scan_iter(match=key_prefix + "*"))
    return {int(key[len(key_prefix) :]) for key in keys if "#" not in key}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("SQLA_SIGNED_URLS_APP", "FILE_URL_CACHE_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


APP = ["--app", "tests.ops.test_cli:current_service"]


def run(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(main, list(args), env=env, catch_exceptions=False)


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and fragment in lines[0]
    assert "Traceback" not in result.output


# -- the commands ------------------------------------------------------------------------------


def test_stats_table_and_json(
    runner: CliRunner, service: CacheService, urls: SignedURLs, db: Any
) -> None:
    ids = add_files(db, "a.png", "b.png")
    cache_files(urls, db, ids)
    cache_files(urls, db, ids)

    table = run(runner, *APP, "stats")
    assert table.exit_code == 0
    assert "hit_ratio" in table.stdout and "50.0 %" in table.stdout
    assert "keys" in table.stdout

    as_json = run(runner, *APP, "stats", "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert (data["hits"], data["misses"], data["keys"]) == (2, 2, 2)


def test_clear_one_and_all(
    runner: CliRunner, service: CacheService, urls: SignedURLs, db: Any
) -> None:
    ids = add_files(db, "a.png", "b.png", "c.png")
    cache_files(urls, db, ids)

    one = run(runner, *APP, "clear", "--file-id", str(ids[0]))
    assert one.exit_code == 0
    assert one.stdout.strip() == f"Cleared 1 cached URL for file {ids[0]}."
    rest = run(runner, *APP, "clear")
    assert rest.stdout.strip() == "Cleared 2 cached URLs."
    assert service.count_keys() == 0


def test_warm_without_a_terminal_prints_the_count(
    runner: CliRunner, service: CacheService, db: Any
) -> None:
    add_files(db, "a1", "a2", "a3", file_type="avatar")
    add_files(db, "p1", file_type="post")

    result = run(runner, *APP, "warm", "--file-type", "avatar", "--limit", "2")

    assert result.exit_code == 0
    assert result.stdout.strip() == "Warmed 2 URLs of type avatar."
    assert service.get_cache_stats()["keys"] == 2


def test_warm_on_a_terminal_shows_progress(
    runner: CliRunner, service: CacheService, db: Any
) -> None:
    add_files(db, *(f"k{i}" for i in range(7)))
    service.batch_size = 3

    result = run(runner, *APP, "warm", env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"})

    assert result.exit_code == 0
    assert "\x1b[" in result.stdout  # the bar drew (and erased) itself
    assert "Warmed 7 URLs." in result.stdout
    assert service.get_cache_stats()["keys"] == 7


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2026-11-01", {2, 3, 4}),
        ("2026-11-01T08:00", {3, 4}),
        ("2026-11-01 08:00:01", {4}),
        ("2027-01-01", set()),
    ],
)
def test_warm_since_takes_only_rows_created_at_or_after_it(
    runner: CliRunner,
    dated_service: CacheService,
    redis_client: Any,
    key_prefix: str,
    since: str,
    expected: set[int],
) -> None:
    result = run(runner, *APP, "warm", "--since", since)

    assert result.exit_code == 0, result.output
    noun = "URL" if len(expected) == 1 else "URLs"
    assert result.stdout.strip() == f"Warmed {len(expected)} {noun}."
    assert cached_ids(redis_client, key_prefix) == expected


def test_warm_since_on_a_terminal_counts_only_those_rows(
    runner: CliRunner, dated_service: CacheService, redis_client: Any, key_prefix: str
) -> None:
    result = run(
        runner,
        *APP,
        "warm",
        "--since",
        "2026-11-01T08:00",
        env={"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"},
    )

    assert result.exit_code == 0, result.output
    assert "Warmed 2 URLs." in result.stdout
    assert "2/2" in result.stdout and "/4" not in result.stdout  # the bar's total obeys --since
    assert cached_ids(redis_client, key_prefix) == {3, 4}


@pytest.mark.parametrize("since", ["2026-13-01", "yesterday", "2026-11-01T08", "01/11/2026"])
def test_warm_bad_since_is_a_usage_error_before_redis(
    runner: CliRunner, dated_service: CacheService, redis_client: Any, since: str
) -> None:
    redis_client.reset()

    result = runner.invoke(main, [*APP, "warm", "--since", since])

    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.stderr
    assert "%Y-%m-%dT%H:%M" in result.stderr  # the accepted formats are listed
    assert "Traceback" not in result.output
    assert redis_client.round_trips == 0


@pytest.mark.parametrize("terminal", [False, True])
def test_warm_since_without_created_at_is_a_one_line_error(
    runner: CliRunner,
    service: CacheService,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    terminal: bool,
) -> None:
    add_files(db, "a.png", "b.png")
    env = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"} if terminal else None

    result = runner.invoke(main, [*APP, "warm", "--since", "2026-11-01"], env=env)

    assert_one_line_error(result, 2, "no created_at column")
    assert cached_ids(redis_client, key_prefix) == set()


def test_refresh(runner: CliRunner, service: CacheService, urls: SignedURLs) -> None:
    now = int(time.time())
    key = f"{urls.settings.key_prefix}4"
    value = encode_entry(
        ("https://files.test/a?sig=old", now + 60 + urls.settings.min_validity, now + 60),
        signer_tag(urls.signer.name),
        "a",
    )
    urls.redis.set(key, value, ex=60)
    urls.redis.zadd(f"{urls.settings.key_prefix}#expiry", {key: now + 60})

    result = run(runner, *APP, "refresh", "--within", "600")

    assert result.exit_code == 0
    assert result.stdout.strip() == "Refreshed 1 cached URL expiring within 600 seconds."


@pytest.mark.parametrize(
    "args",
    [
        ["clear", "--file-id", "-1"],
        ["clear", "--file-id", "abc"],
        ["warm", "--limit", "0"],
        ["refresh", "--within", "0"],
        ["stats", "--bogus"],
        ["nosuchcommand"],
    ],
)
def test_bad_usage_exits_2(runner: CliRunner, service: CacheService, args: list[str]) -> None:
    result = runner.invoke(main, [*APP, *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- pointing at the cache ---------------------------------------------------------------------


def test_app_may_name_a_factory_of_signed_urls_or_a_flask_app(
    runner: CliRunner, service: CacheService, urls: SignedURLs
) -> None:
    result = run(runner, "--app", "tests.ops.test_cli:current_urls", "stats", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["keys"] == 0

    from flask import Flask

    from sqla_signed_urls.flask import FlaskSignedURLs
    from sqla_signed_urls.testing import FakeSigner

    app = Flask(__name__)
    app.config["FILE_URL_CACHE_KEY_PREFIX"] = urls.settings.key_prefix
    ext = FlaskSignedURLs(app, signer=FakeSigner())
    _current["flask_app"] = app
    try:
        result = run(runner, "--app", "tests.ops.test_cli:current_flask_app", "stats", "--json")
        assert result.exit_code == 0 and "hit_ratio" in json.loads(result.stdout)
    finally:
        ext.urls.close()


@pytest.mark.parametrize(
    ("app", "fragment"),
    [
        ("no_such_module_here:x", "cannot import"),
        ("tests.ops.test_cli:nothing_here", "has no"),
        ("tests.ops.test_cli:NOT_A_SERVICE", "expected a CacheService"),
        ("tests.ops.test_cli", "MODULE:OBJECT"),
    ],
)
def test_bad_app_exits_2(runner: CliRunner, app: str, fragment: str) -> None:
    result = runner.invoke(main, ["--app", app, "stats"])
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_app_and_redis_url_together_or_neither_exit_2(
    runner: CliRunner, service: CacheService, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = runner.invoke(main, [*APP, "--redis-url", UNREACHABLE, "stats"])
    assert both.exit_code == 2 and "not both" in both.stderr
    monkeypatch.delenv("REDIS_URL", raising=False)
    neither = runner.invoke(main, ["stats"])
    assert neither.exit_code == 2 and "--app" in neither.stderr


def test_warm_needs_the_app(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--redis-url", UNREACHABLE, "warm"])
    assert result.exit_code == 2 and "--app" in result.stderr


def test_bad_redis_url_names_the_setting(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--redis-url", "http://localhost:6379", "stats"])
    assert_one_line_error(result, 2, "scheme")


@pytest.mark.parametrize(
    "command", [["stats"], ["clear"], ["clear", "--file-id", "3"], ["refresh"]]
)
def test_unreachable_redis_exits_1_with_one_line(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, ["--redis-url", UNREACHABLE, *command])
    assert_one_line_error(result, 1, "Redis unavailable")


def test_unreachable_database_exits_1_with_one_line(
    runner: CliRunner, urls: SignedURLs, tmp_path: Path
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    _current["broken"] = CacheService(urls, session_factory=sessionmaker(engine), model=File)
    try:
        result = runner.invoke(main, ["--app", "tests.ops.test_cli:broken_service", "warm"])
    finally:
        _current.clear()
        engine.dispose()
    assert_one_line_error(result, 1, "database unavailable")


def test_redis_url_mode_against_a_real_server(
    runner: CliRunner,
    real_redis_url: str,
    urls: SignedURLs,
    db: Any,
    key_prefix: str,
) -> None:
    ids = add_files(db, "a.png", "b.png")
    cache_files(urls, db, ids)
    urls.flush_stats()
    base = ["--redis-url", real_redis_url, "--key-prefix", key_prefix]

    stats = run(runner, *base, "stats", "--json")
    assert stats.exit_code == 0
    data = json.loads(stats.stdout)
    assert (data["keys"], data["misses"], data["key_prefix"]) == (2, 2, key_prefix)

    refresh = run(runner, *base, "refresh")
    assert refresh.exit_code == 0 and "Refreshed 0" in refresh.stdout
    assert "none re-signed" in refresh.stderr

    clear = run(runner, *base, "clear")
    assert clear.stdout.strip() == "Cleared 2 cached URLs."


# -- the demo command, loaded lazily -----------------------------------------------------------


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = run(runner, "--help")
    assert result.exit_code == 0
    for name in ("stats", "clear", "warm", "refresh", "demo"):
        assert name in result.stdout


def test_demo_delegates_to_the_demo_module(runner: CliRunner) -> None:
    from sqla_signed_urls.demo import demo_command

    assert main.get_command(click.Context(main), "demo") is demo_command
    assert run(runner, "demo", "--help").exit_code == 0


def test_missing_lazy_command_is_listed_and_fails_cleanly(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cli.LAZY_COMMANDS, "ghost", ("no_such_module_xyz", "cmd", "A ghost."))
    assert "ghost" in run(runner, "--help").stdout
    result = runner.invoke(main, ["ghost"])
    assert_one_line_error(result, 1, "not available")


# -- the installed script ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["clear"], ["refresh"]])
def test_installed_script_exit_codes_against_unreachable_redis(command: list[str]) -> None:
    result = subprocess.run(
        [str(SCRIPT), "--redis-url", UNREACHABLE, *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Redis unavailable"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_installed_script_help_and_usage_codes() -> None:
    ok = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "refresh" in ok.stdout
    bad = subprocess.run(
        [str(SCRIPT), "--redis-url", UNREACHABLE, "clear", "--file-id", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
