"""The Campus Forum example as it is deployed: every setting from the environment, the
``prepare`` command, one generated file secret however many workers start together, a fresh
connection pool after a fork, signatures kept out of server logs, and the apps under real
gunicorn and uvicorn workers on SQLite (the same against PostgreSQL and Redis is in
``tests/servers/test_deployment.py``)."""

from __future__ import annotations

import ast
import logging
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

from examples.campus_forum import Forum, common, create_app
from examples.campus_forum.common import RedactSignatures, instance_secret

from ..helpers.forum import (
    RAW_SIGNATURE,
    REPO_ROOT,
    SECRET,
    ForumServer,
    page_files,
    server_env,
)

SIGNED = "/files/avatars/1/ab12.png?expires=1796137200&signature=c2VjcmV0LXNpZ25hdHVyZQ"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No forum setting from the environment the tests run in (CI sets DATABASE_URL and
    REDIS_URL)."""
    for name in common.ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(("FILE_URL_", "OSS_")):
            monkeypatch.delenv(name)
    return monkeypatch


# -- settings --------------------------------------------------------------------------------


def test_every_setting_comes_from_the_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    clean_env.setenv("UPLOAD_DIR", str(tmp_path / "uploads"))
    clean_env.setenv("AUTO_MIGRATE", "0")
    clean_env.setenv("LOAD_DEMO_DATA", "off")
    clean_env.setenv("DEMO_POSTS", "7")
    clean_env.setenv("FILES_SECRET", SECRET)

    settings = common.settings()

    assert settings["INSTANCE_PATH"] == str(tmp_path / "instance")
    assert common.instance_path(settings) == tmp_path / "instance"
    assert settings["UPLOAD_DIR"] == str(tmp_path / "uploads")
    assert settings["AUTO_MIGRATE"] is False
    assert settings["LOAD_DEMO_DATA"] is False
    assert settings["DEMO_POSTS"] == 7
    assert settings["FILES_SECRET"] == SECRET
    # the app's own configuration wins over the environment
    assert common.settings({"LOAD_DEMO_DATA": True, "DEMO_POSTS": 3})["LOAD_DEMO_DATA"] is True


def test_defaults_without_any_setting(clean_env: pytest.MonkeyPatch) -> None:
    settings = common.settings()

    assert settings["AUTO_MIGRATE"] is True
    assert settings["LOAD_DEMO_DATA"] is True
    assert settings["DEMO_POSTS"] == 24
    assert common.instance_path(settings) == REPO_ROOT / "instance"


@pytest.mark.parametrize(
    ("name", "value"),
    [("AUTO_MIGRATE", "maybe"), ("LOAD_DEMO_DATA", "2"), ("DEMO_POSTS", "many")],
)
def test_a_setting_that_makes_no_sense_is_refused_by_name(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        common.settings()
    clean_env.delenv(name)
    with pytest.raises(ValueError, match="DEMO_POSTS"):
        common.settings({"DEMO_POSTS": -1})


def test_demo_data_size_and_first_start_from_the_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = tmp_path / "forum.db"
    clean_env.setenv("DATABASE_URL", f"sqlite:///{database}")
    clean_env.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    clean_env.setenv("FILES_SECRET", SECRET)
    clean_env.setenv("DEMO_POSTS", "5")

    app = create_app()
    Forum.of(app).close()

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM posts").fetchone() == (5,)

    empty = tmp_path / "empty.db"
    clean_env.setenv("DATABASE_URL", f"sqlite:///{empty}")
    clean_env.setenv("AUTO_MIGRATE", "0")
    clean_env.setenv("LOAD_DEMO_DATA", "0")
    app = create_app()
    try:
        assert inspect(Forum.of(app).engine).get_table_names() == []
    finally:
        Forum.of(app).close()


def test_told_where_everything_goes_nothing_is_written_under_the_instance_path(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    instance = tmp_path / "instance"
    clean_env.setenv("INSTANCE_PATH", str(instance))
    clean_env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'forum.db'}")
    (tmp_path / "data").mkdir()
    clean_env.setenv("FILES_SECRET", SECRET)
    clean_env.setenv("UPLOAD_DIR", str(tmp_path / "uploads"))

    app = create_app()
    try:
        assert app.test_client().get("/").status_code == 200
    finally:
        Forum.of(app).close()

    assert not instance.exists()
    assert any((tmp_path / "uploads").iterdir())


# -- the prepare command ---------------------------------------------------------------------


def test_the_prepare_command_migrates_and_loads_demo_data_once(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = tmp_path / "forum.db"
    env = server_env(
        DATABASE_URL=f"sqlite:///{database}",
        INSTANCE_PATH=str(tmp_path / "instance"),
        FILES_SECRET=SECRET,
    )

    def prepare(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "examples.campus_forum", "prepare", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "schema at the latest revision" in prepare()
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert "demo data loaded: 3 posts" in prepare("--demo-data", "3")
    assert "already has users" in prepare("--demo-data")
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM posts").fetchone() == (3,)
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)

    # workers started afterwards neither migrate nor load anything
    clean_env.setenv("DATABASE_URL", f"sqlite:///{database}")
    clean_env.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    clean_env.setenv("AUTO_MIGRATE", "0")
    clean_env.setenv("LOAD_DEMO_DATA", "0")
    app = create_app()
    try:
        page = app.test_client().get("/")
        assert page.status_code == 200
        assert len(page_files(page.text)) >= 3
    finally:
        Forum.of(app).close()


# -- the generated secret --------------------------------------------------------------------

ROUNDS = 200
RACERS = 4


def _race_for_the_secret(base: str, rounds: int, barrier: Any, results: Any) -> None:
    """One of the racing processes: every round, create-or-read the secret of a fresh
    instance directory at the same moment as the others."""
    seen: list[str] = []
    for n in range(rounds):
        barrier.wait(timeout=60)
        try:
            seen.append(instance_secret(Path(base) / f"round-{n}"))
        except Exception as exc:  # reported, not raised: the parent compares the rounds
            seen.append(f"failed: {type(exc).__name__}")
    results.put(seen)


def test_workers_starting_together_agree_on_the_generated_secret(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(RACERS)
    results = context.Queue()
    racers = [
        context.Process(target=_race_for_the_secret, args=(str(tmp_path), ROUNDS, barrier, results))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    try:
        seen = [results.get(timeout=120) for _ in racers]
    finally:
        for racer in racers:
            racer.join(timeout=30)
            if racer.is_alive():
                racer.kill()

    disagreements = [n for n in range(ROUNDS) if len({s[n] for s in seen}) != 1]
    empty_or_failed = [
        n for n in range(ROUNDS) if any(not s[n] or s[n].startswith("failed") for s in seen)
    ]
    assert not disagreements, f"{len(disagreements)} of {ROUNDS} rounds: different secrets"
    assert not empty_or_failed, f"{len(empty_or_failed)} of {ROUNDS} rounds: empty or failed"
    for n in (0, ROUNDS - 1):
        directory = tmp_path / f"round-{n}"
        assert [p.name for p in directory.iterdir()] == ["files_secret"]  # no leftovers
        assert (directory / "files_secret").stat().st_mode & 0o077 == 0
        assert len(seen[0][n]) == 64


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "files_secret").write_text("")
    with pytest.raises(RuntimeError, match="empty"):
        instance_secret(tmp_path)


# -- fork safety -----------------------------------------------------------------------------


def test_after_a_fork_the_engine_opens_connections_of_its_own(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'fork.db'}")
    try:
        with engine.connect() as connection:
            inherited = connection.connection.dbapi_connection
        pool = engine.pool
        common.dispose_after_fork(engine)

        common._dispose_in_child()  # what os.register_at_fork runs in a forked child

        assert engine.pool is not pool
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection is not inherited
        assert inherited is not None
        inherited.execute("SELECT 1")  # the parent's connection was left open, not closed
    finally:
        engine.dispose()


# -- logs ------------------------------------------------------------------------------------


def test_the_log_filter_redacts_positional_and_named_arguments() -> None:
    from gunicorn.glogging import SafeAtoms

    positional = logging.LogRecord("uvicorn.access", 20, "", 0, '%s "%s"', ("h", SIGNED), None)
    atoms = SafeAtoms({"r": f"GET {SIGNED} HTTP/1.1", "q": SIGNED.split("?")[1], "s": 200})
    named = logging.LogRecord("gunicorn.access", 20, "", 0, '"%(r)s" %(q)s %(s)s', (), None)
    named.args = atoms
    message = logging.LogRecord("gunicorn.error", 40, "", 0, f"Error handling {SIGNED}", (), None)

    for record in (positional, named, message):
        assert RedactSignatures().filter(record)
        text = record.getMessage()
        assert "signature=<redacted>" in text
        assert not RAW_SIGNATURE.search(text)
    assert named.args is atoms  # gunicorn's lookup rules kept


def test_the_gunicorn_logger_redacts_every_atom() -> None:
    from gunicorn.config import Config

    from examples.campus_forum.gunicorn_conf import RedactingLogger

    class Response:
        status = "200 OK"
        sent = 10
        headers = [("Content-Type", "image/png")]

    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": SIGNED,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": SIGNED.split("?")[0],
        "QUERY_STRING": SIGNED.split("?")[1],
        "HTTP_REFERER": "http://forum.test" + SIGNED,
    }
    request = type("Request", (), {"headers": [("Referer", environ["HTTP_REFERER"])]})()
    logger = RedactingLogger(Config())
    import datetime as dt

    atoms = logger.atoms(Response(), request, environ, dt.timedelta(seconds=0.01))

    text = " ".join(str(v) for v in atoms.values())
    assert "signature=<redacted>" in atoms["r"]
    assert not RAW_SIGNATURE.search(text)


# -- real servers on SQLite ------------------------------------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["workers", "preloaded"])
def test_four_gunicorn_workers_start_together_on_an_empty_sqlite_database(
    tmp_path: Path, preload: bool
) -> None:
    """No FILES_SECRET and an empty database: the workers make one secret and one copy of
    the demo data, whether each builds the app or they are forked from a master that did."""
    database = tmp_path / "forum.db"
    env = server_env(DATABASE_URL=f"sqlite:///{database}", INSTANCE_PATH=str(tmp_path / "instance"))
    server = ForumServer.gunicorn(
        tmp_path / "server", "examples.campus_forum:create_app()", env, preload=preload
    )
    server.start()
    try:
        server.wait_ready()
        statuses = []
        for n in range(40):  # spread over the workers: each signs and checks URLs
            page = server.get(("/", "/?page=2", f"/users/{n % 8 + 1}")[n % 3])
            statuses.append(page.status)
            for _, url in page_files(page.body)[:3]:
                statuses.append(server.get(url).status)
        assert set(statuses) == {200}
    finally:
        assert server.stop() == 0
    assert server.crashes() == []
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (8,)
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    access = server.log("access.log")
    assert "GET /files/" in access
    assert "signature=<redacted>" in access
    assert not RAW_SIGNATURE.search(server.logs())


def test_four_uvicorn_workers_start_together_on_an_empty_sqlite_database(tmp_path: Path) -> None:
    database = tmp_path / "forum.db"
    env = server_env(DATABASE_URL=f"sqlite:///{database}", INSTANCE_PATH=str(tmp_path / "instance"))
    server = ForumServer.uvicorn(tmp_path / "server", env).start()
    try:
        server.wait_ready()
        statuses = []
        for n in range(40):
            page = server.get(("/", "/?page=2", f"/users/{n % 8 + 1}")[n % 3])
            statuses.append(page.status)
            for _, url in page_files(page.body)[:3]:
                statuses.append(server.get(url).status)
        assert set(statuses) == {200}
    finally:
        assert server.stop() == 0
    assert server.crashes() == []
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (8,)
    output = server.log("output.log")
    assert "signature=<redacted>" in output
    assert not RAW_SIGNATURE.search(output)


# -- the example extra -----------------------------------------------------------------------


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require, as installed here."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_requirement_name(r) for r in requires if "extra ==" not in r]
    return found


def test_the_example_extra_installs_everything_the_example_and_its_commands_use() -> None:
    """``pip install -e '.[example]'`` brings every module the example, its migrations and its
    gunicorn settings import, and the commands of docs/deployment.md."""
    own = metadata.requires("sqla-signed-urls") or []
    core = {_requirement_name(r) for r in own if "extra ==" not in r}
    extra = {_requirement_name(r) for r in own if 'extra == "example"' in r}
    assert extra, "no example extra: reinstall the project (pip install -e '.[dev]')"
    installs = _closure(core | extra)

    sources = [
        *(REPO_ROOT / "examples" / "campus_forum").rglob("*.py"),
        REPO_ROOT / "migrations" / "env.py",
    ]
    imported: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    imported -= set(sys.stdlib_module_names) | {"examples", "sqla_signed_urls", "__future__"}
    distributions = metadata.packages_distributions()
    missing = {
        module
        for module in imported
        if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & installs
    }
    assert missing == set()
    commands = {"flask", "gunicorn", "uvicorn", "uvicorn-worker", "alembic", "psycopg", "asyncpg"}
    assert commands <= installs
