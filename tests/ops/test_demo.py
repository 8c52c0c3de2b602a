"""The demo command: plays forum traffic and reports its success metrics in a table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sqla_signed_urls.demo import demo_command, run_demo

METRICS = (
    "Cache hit ratio",
    "Signer calls avoided",
    "Cached file.url p50 / p99",
    "Cached page p50 / p99",
    "Redis round trips per page",
    "Invalidations applied",
    "Stale URLs served",
)


def test_demo_prints_every_success_metric_with_a_verdict() -> None:
    result = CliRunner().invoke(
        demo_command, ["--files", "200", "--pages", "300", "--seed", "3"], catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for metric in METRICS:
        row = next((line for line in lines if metric in line), None)
        assert row is not None, f"{metric!r} missing from:\n{result.output}"
        assert "PASS" in row, row
    assert "FAIL" not in result.output
    assert "200 files, 300 list pages" in result.output


def test_demo_measures_a_workload_that_really_invalidates() -> None:
    result = run_demo(files=150, pages=250, seed=11)

    assert result.passed
    assert result.invalidations_expected > 0
    assert result.invalidations_applied == result.invalidations_expected
    assert result.edits + result.deletes == result.invalidations_expected
    assert result.stale_urls == 0
    assert max(result.page_reads) == 1  # one MGET on a page that misses the in-process layer
    assert result.signer_calls == result.misses
    assert result.url_reads > result.pages * 20


def test_same_seed_gives_the_same_workload() -> None:
    first = run_demo(files=120, pages=60, seed=5)
    second = run_demo(files=120, pages=60, seed=5)

    assert (first.edits, first.deletes, first.uploads, first.single_reads, first.url_reads) == (
        second.edits,
        second.deletes,
        second.uploads,
        second.single_reads,
        second.url_reads,
    )


def test_demo_on_a_real_redis_removes_its_keys(real_redis_url: str) -> None:
    import redis

    result = run_demo(files=120, pages=80, seed=2, redis_url=real_redis_url)

    assert "Redis server" in result.backend
    client = redis.Redis.from_url(real_redis_url)
    try:
        assert not list(client.scan_iter(match="sqla-signed-urls-demo:*"))
    finally:
        client.close()


def test_demo_rejects_bad_options() -> None:
    result = CliRunner().invoke(demo_command, ["--files", "3"])

    assert result.exit_code == 2
    assert "--files" in result.output


def test_python_dash_m_runs_the_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSS_")}
    done = subprocess.run(
        [sys.executable, "-m", "sqla_signed_urls.demo", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "--redis-url" in done.stdout
    assert "python -m sqla_signed_urls.demo" in done.stdout


@pytest.fixture(autouse=True)
def _no_oss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo signs with OSS when OSS_* is set; these tests use the offline LocalSigner."""
    for name in list(os.environ):
        if name.startswith("OSS_"):
            monkeypatch.delenv(name)
