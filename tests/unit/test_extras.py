"""Optional extras: without its driver a feature says which ``pip install`` brings it, and the
core package works with every optional driver missing.

Each test runs a fresh Python with some packages blocked (``sys.modules[name] = None`` makes
``import name`` fail) and checks what a user would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("sqla-signed-urls")
OPTIONAL = ("oss2", "click", "rich", "fakeredis", "flask", "prometheus_client")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "REDIS_URL")}
    env.update(extra)
    return env


def run_blocked(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter in which the ``blocked`` packages cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        check=False,
    )


def expect_configuration_error(module: str, extra: str, code: str, *, package: str) -> None:
    """``code`` (run with ``module`` blocked) raises ConfigurationError naming the extra."""
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    result = run_blocked(
        (module,),
        "from sqla_signed_urls import ConfigurationError\n"
        f"try:\n{body}\n"
        "except ConfigurationError as exc:\n    print(exc)\n"
        "else:\n    print('no error')\n",
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert f'pip install "sqla-signed-urls[{extra}]"' in message, message
    assert repr(package) in message, message


def test_oss_signer_without_oss2_names_the_oss_extra() -> None:
    importable = run_blocked(
        ("oss2",), "from sqla_signed_urls.signers import LocalSigner, OSSSigner\nprint('ok')"
    )
    assert importable.returncode == 0 and importable.stdout.strip() == "ok", importable.stderr

    bucket = "type('Bucket', (), {'sign_url': 0, 'bucket_name': 'b', 'auth': 0})()"
    expect_configuration_error(
        "oss2",
        "oss",
        f"from sqla_signed_urls.signers import OSSSigner\nOSSSigner({bucket})",
        package="oss2",
    )
    expect_configuration_error(
        "oss2",
        "oss",
        """
        from sqla_signed_urls.signers import OSSSigner
        OSSSigner.from_env({"OSS_ACCESS_KEY_ID": "id", "OSS_ACCESS_KEY_SECRET": "secret",
                            "OSS_ENDPOINT": "https://oss.example", "OSS_BUCKET": "b"})
        """,
        package="oss2",
    )


@pytest.mark.parametrize(
    ("module", "extra", "target"),
    [
        ("click", "cli", "sqla_signed_urls.cli"),
        ("rich", "cli", "sqla_signed_urls.cli"),
        ("click", "cli", "sqla_signed_urls.demo"),
        ("flask", "flask", "sqla_signed_urls.flask"),
        ("prometheus_client", "prometheus", "sqla_signed_urls.metrics"),
    ],
)
def test_importing_a_feature_without_its_driver_names_the_extra(
    module: str, extra: str, target: str
) -> None:
    expect_configuration_error(module, extra, f"import {target}", package=module)


def test_demo_on_the_in_process_redis_without_fakeredis_names_the_embedded_extra() -> None:
    expect_configuration_error(
        "fakeredis",
        "embedded",
        "from sqla_signed_urls.demo import run_demo\nrun_demo(files=100, pages=1)",
        package="fakeredis",
    )


def test_in_process_redis_default_without_fakeredis_names_the_embedded_extra() -> None:
    expect_configuration_error(
        "fakeredis",
        "embedded",
        """
        from sqla_signed_urls import SignedURLs
        from sqla_signed_urls.signers import LocalSigner
        SignedURLs(LocalSigner("s" * 32, base_url="/files"))  # no redis=, no REDIS_URL
        """,
        package="fakeredis",
    )


def _assert_one_line_cli_error(result: subprocess.CompletedProcess[str], package: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert repr(package) in lines[0] and 'pip install "sqla-signed-urls[cli]"' in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("package", ["click", "rich"])
def test_console_script_without_the_cli_extra_prints_one_line(package: str, tmp_path: Path) -> None:
    # A package of that name earlier on the path that refuses to import, as if not installed.
    shadow = tmp_path / package
    shadow.mkdir()
    (shadow / "__init__.py").write_text(f"raise ImportError('no {package} here')\n")
    env = _env(PYTHONPATH=str(tmp_path))
    assert SCRIPT.exists(), f"{SCRIPT} is missing: install the project (pip install -e .)"

    for command in ([str(SCRIPT)], [sys.executable, "-m", "sqla_signed_urls"]):
        result = subprocess.run(
            [*command, "stats"], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
        )
        _assert_one_line_cli_error(result, package)


def test_core_works_with_every_optional_driver_missing() -> None:
    result = run_blocked(
        OPTIONAL,
        """
        import logging
        from sqlalchemy import create_engine
        from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

        import sqla_signed_urls
        from sqla_signed_urls import ObjectKey, SignedURLs
        from sqla_signed_urls.signers import LocalSigner

        logging.disable(logging.WARNING)  # the unreachable Redis below is reported once

        class Base(DeclarativeBase):
            pass

        class File(Base):
            __tablename__ = "files"
            id: Mapped[int] = mapped_column(primary_key=True)
            object_key: Mapped[str | None] = mapped_column(ObjectKey(255))

        signer = LocalSigner("s" * 32, base_url="/files")
        # Nothing listens on port 1: every URL is signed directly (the cache fails open).
        urls = SignedURLs(signer, redis="redis://127.0.0.1:1/0")
        urls.install(Base)
        engine = create_engine("sqlite://")
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(File(id=1, object_key="posts/1/a.png"))
            session.commit()
            assert signer.verify(session.get(File, 1).url) == "posts/1/a.png"
        urls.uninstall()
        urls.close()
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
