"""The history on the command line: ``sqla-signed-urls history [--json]`` and the live view
``stats --watch`` (sparklines of the last hour; Ctrl-C exits 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner, Result

from sqla_signed_urls import CacheService, SignedURLs
from sqla_signed_urls.cli import main
from sqla_signed_urls.history import encode_point
from sqla_signed_urls.testing import FakeSigner

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".venv" / "bin" / "sqla-signed-urls"

# What --app points at (set by the fixture below).
_current: dict[str, Any] = {}


def current_service() -> CacheService:
    service: CacheService = _current["service"]
    return service


def embedded_service() -> CacheService:
    """For the command in a process of its own: an in-process Redis with an hour of history."""
    urls = SignedURLs(FakeSigner(), redis=fakeredis.FakeRedis(), local_cache_size=0)
    fill_history(urls, 60)
    return CacheService(urls)


@pytest.fixture
def service(urls: SignedURLs) -> Iterator[CacheService]:
    _current["service"] = CacheService(urls)
    yield _current["service"]
    _current.clear()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("SQLA_SIGNED_URLS_APP", "FILE_URL_CACHE_KEY_PREFIX", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


APP = ["--app", "tests.ops.test_history_cli:current_service"]


def fill_history(urls: SignedURLs, minutes: int) -> list[int]:
    """A point a minute up to now: 90 hits, 10 misses, 12 signings a minute, keys growing."""
    now = int(time.time()) // 60 * 60
    times = [now - 60 * (minutes - 1 - i) for i in range(minutes)]
    for i, at in enumerate(times):
        values = {
            "hits": 90 * i,
            "misses": 10 * i,
            "signed": 12 * i,
            "keys": 10 * i,
            "memory_used_bytes": 3 * 1024 * 1024 + 1024 * i,
        }
        urls.store.append_history(at, encode_point(at, values), 1440)
    return times


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(main, [*APP, *args], catch_exceptions=False)


# -- history ------------------------------------------------------------------------------------


def test_history_prints_one_row_a_point(runner: CliRunner, service: CacheService) -> None:
    times = fill_history(service.urls, 5)
    result = run(runner, "history")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "5 points, every 60 s" in lines[0]
    stamps = [time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) for t in times]
    rows = [line for line in lines if any(stamp in line for stamp in stamps)]
    assert len(rows) == 5
    assert "—" in rows[0], "the first point starts the first interval"
    for row in rows[1:]:
        assert "90.0 %" in row and "90.0" in row and "10.0" in row and "12.0" in row
    assert "3.0 MiB" in rows[0]


def test_history_json_is_the_points(runner: CliRunner, service: CacheService) -> None:
    times = fill_history(service.urls, 4)
    result = run(runner, "history", "--json")
    assert result.exit_code == 0
    body = json.loads(result.output)
    assert body["interval"] == 60
    assert body["points"] == service.get_cache_history()
    assert [p["time"] for p in body["points"]] == times
    recent = json.loads(run(runner, "history", "--json", "--last", "2").output)
    assert [p["time"] for p in recent["points"]] == times[-2:]


def test_history_without_points_says_how_they_come(
    runner: CliRunner, service: CacheService
) -> None:
    result = run(runner, "history")
    assert result.exit_code == 0
    assert result.output == (
        "No history yet: one point is recorded every 60 seconds while the fleet reads URLs.\n"
    )
    assert json.loads(run(runner, "history", "--json").output) == {"interval": 60, "points": []}


def test_history_with_redis_down_is_a_one_line_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--redis-url", "redis://127.0.0.1:1/0", "history"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("Error: Redis unavailable while reading the history")


# -- stats --watch ------------------------------------------------------------------------------


class CtrlC:
    """``time.sleep`` of the command's thread: the ``frames``-th sleep is a Ctrl-C; other
    threads sleep as usual."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.sleeps: list[float] = []
        self._sleep = time.sleep
        self._thread = threading.get_ident()

    def __call__(self, seconds: float) -> None:
        if threading.get_ident() != self._thread:
            self._sleep(seconds)
            return
        self.sleeps.append(seconds)
        if len(self.sleeps) >= self.frames:
            raise KeyboardInterrupt


def test_watch_redraws_with_sparklines_until_ctrl_c(
    runner: CliRunner, service: CacheService, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_history(service.urls, 60)
    ctrl_c = CtrlC(frames=3)
    monkeypatch.setattr(time, "sleep", ctrl_c)

    result = run(runner, "stats", "--watch", "--every", "0.5")

    assert result.exit_code == 0, result.output
    assert ctrl_c.sleeps == [0.5, 0.5, 0.5]
    frames = result.output.split("URL cache ")[1:]
    assert len(frames) == 3
    frame = frames[-1]
    assert "every 0.5 s · Ctrl-C quits" in frame
    rows = {line.split("│")[1].strip(): line for line in frame.splitlines() if line.count("│") > 4}
    assert "90.0 %" in rows["hit ratio"]
    assert "█" * 40 in rows["hit ratio"], "a full hour at 90 % is a row of full blocks"
    assert "▁" in rows["keys"] and "█" in rows["keys"], "keys grew over the hour"
    for figure in ("hits / min", "misses / min", "signings / min", "memory"):
        assert figure in rows
    assert "Aborted" not in result.output


def test_watch_keeps_going_while_redis_is_down(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", CtrlC(frames=2))
    result = runner.invoke(main, ["--redis-url", "redis://127.0.0.1:1/0", "stats", "--watch"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    errors = [line for line in lines if "Error: Redis unavailable while reading statistics" in line]
    assert len(errors) == 2
    assert lines.count("Trying again in 2 s; Ctrl-C quits.") == 2


def test_watch_and_json_do_not_mix(runner: CliRunner, service: CacheService) -> None:
    result = runner.invoke(main, [*APP, "stats", "--watch", "--json"])
    assert result.exit_code == 2
    assert "--watch draws a view for people" in result.output


def test_ctrl_c_ends_the_live_view_of_the_installed_command_with_status_0() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    env.pop("SQLA_SIGNED_URLS_APP", None)
    command = [
        str(SCRIPT),
        "--app",
        "tests.ops.test_history_cli:embedded_service",
        "stats",
        "--watch",
        "--every",
        "0.2",
    ]
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        seen = []
        for _ in range(10_000):  # bounded: the first frame comes long before
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "keys" in line and "▁" in line:  # the sparkline row of the first frame
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert any("Ctrl-C quits" in line for line in seen), "".join(seen)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
