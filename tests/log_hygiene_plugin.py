"""pytest plugin: fail the run when any log record of the whole suite holds a credential.

A signed URL is a bearer credential, and so are passwords, secrets and tokens: none may reach a
log line. This plugin puts one handler on the root logger for the whole session, scans every
record that reaches it (message, arguments, formatted exception and stack), and at the end of
the session prints the offenders and turns the exit status into a failure.

Enable it from ``tests/conftest.py``::

    pytest_plugins = ["tests.log_hygiene_plugin"]

What counts as a credential:

- a URL signature in a query string: ``signature=`` (LocalSigner's HMAC), ``Signature=`` (OSS
  V1), ``x-oss-signature=`` (OSS V4), ``X-Amz-Signature=``, and FakeSigner's ``sig=fake``;
- STS tokens in a query string (``security-token=``, ``x-oss-security-token=``);
- a password inside a URL (``redis://user:password@host``), unless redacted;
- ``Authorization:`` headers and ``Bearer`` tokens;
- every secret the suite handles: LocalSigner and oss2 secrets as they are constructed,
  passwords of the throwaway Redis servers, passwords in ``REDIS_URL``/``DATABASE_URL``, and
  environment variables named like ``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*`` (values of 8+
  characters; shorter ones would match ordinary words). Tests may add their own with
  :func:`register_secret`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

__all__ = ["Offender", "register_secret", "scan"]

#: Secrets shorter than this are not tracked: they would match ordinary text.
MIN_SECRET_LENGTH = 8

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("URL signature", re.compile(r"(?i)[?&;](?:x-oss-|x-amz-)?signature=[^&\s'\"]{6,}")),
    ("FakeSigner signature", re.compile(r"[?&]sig=fake\b")),
    ("STS token", re.compile(r"(?i)[?&;](?:x-oss-)?security-token=[^&\s'\"]{6,}")),
    ("password in a URL", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@")),
    ("Authorization header", re.compile(r"(?i)\bauthorization['\"]?\s*[:=]\s*['\"]?\w+\s+\S{8,}")),
    ("Bearer token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")),
]
#: What redacting code puts in place of a password.
REDACTED = {"<REDACTED>", "REDACTED", "***", "****", "*****", "******", "xxx", "XXX", "..."}
_SECRET_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY", re.IGNORECASE)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: Any) -> None:
    """Treat ``value`` as a secret that must never appear in a log record."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def scan(text: str) -> list[str]:
    """Names of the credential kinds found in ``text`` (empty when it is clean)."""
    found: list[str] = []
    for name, pattern in PATTERNS:
        for match in pattern.finditer(text):
            if name == "password in a URL" and match.group(1) in REDACTED:
                continue
            found.append(name)
            break
    with _secrets_lock:
        secrets = list(_secrets)
    if any(secret in text for secret in secrets):
        found.append("known secret")
    return found


@dataclass(frozen=True)
class Offender:
    test: str
    logger: str
    level: str
    kinds: tuple[str, ...]
    excerpt: str


def _record_text(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string is not ours to report here
        message = f"{record.msg!r} {record.args!r}"
    parts = [message]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def _redact(text: str) -> str:
    """An excerpt of an offending line that does not itself leak what it found."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "<SECRET>")
    for name, pattern in PATTERNS:
        text = pattern.sub(f"<{name}>", text)
    return text[:300]


class HygieneHandler(logging.Handler):
    """Scans every record it sees; keeps the offending ones."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.current_test = "(outside any test)"
        self.offenders: list[Offender] = []
        self.scanned = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _record_text(record)
            self.scanned += 1
            kinds = scan(text)
            if kinds:
                self.offenders.append(
                    Offender(
                        self.current_test,
                        record.name,
                        record.levelname,
                        tuple(kinds),
                        _redact(text),
                    )
                )
        except Exception:  # a scanner bug must not break the suite's logging
            self.handleError(record)


_handler: HygieneHandler | None = None


def handler() -> HygieneHandler | None:
    """The session's handler (``None`` when the plugin is not enabled)."""
    return _handler


def _wrap_init(cls: type, *secret_params: str) -> None:
    """Make ``cls.__init__`` register the named arguments as secrets."""
    original = cls.__init__
    if getattr(original, "_log_hygiene_wrapped", False):
        return
    import inspect

    signature = inspect.signature(original)

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind_partial(self, *args, **kwargs)
            for name in secret_params:
                register_secret(bound.arguments.get(name))
        except TypeError:
            pass
        original(self, *args, **kwargs)

    init._log_hygiene_wrapped = True  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]


def _register_environment() -> None:
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name):
            register_secret(value)
    for name in ("REDIS_URL", "DATABASE_URL"):
        url = os.environ.get(name)
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue
            if password:
                register_secret(unquote(password))


def _hook_secret_sources() -> None:
    from sqla_signed_urls.signers.local import LocalSigner

    _wrap_init(LocalSigner, "secret")
    try:
        from oss2.credentials import StaticCredentialsProvider
    except ImportError:  # pragma: no cover - oss2 is a dependency
        return
    _wrap_init(StaticCredentialsProvider, "access_key_secret", "security_token")


def pytest_configure(config: pytest.Config) -> None:
    global _handler
    if _handler is not None:
        return
    _register_environment()
    _hook_secret_sources()
    _handler = HygieneHandler()
    logging.getLogger().addHandler(_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    if _handler is not None:
        _handler.current_test = nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _handler is None:
        return
    logging.getLogger().removeHandler(_handler)
    if _handler.offenders and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _handler is None:
        return
    offenders = _handler.offenders
    if not offenders:
        terminalreporter.write_line(
            f"log hygiene: {_handler.scanned} log records scanned, none holds a credential"
        )
        return
    terminalreporter.section("log hygiene: credentials in log records", sep="=", red=True)
    for line in _describe(offenders):
        terminalreporter.write_line(line)


def _describe(offenders: Iterable[Offender]) -> list[str]:
    lines = []
    for o in offenders:
        lines.append(f"{o.test}: {o.logger} {o.level} [{', '.join(o.kinds)}] {o.excerpt!r}")
    return lines
