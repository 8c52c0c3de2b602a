"""Settings: one validated dataclass, read from arguments, the environment or ``app.config``."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from .exceptions import ConfigurationError

__all__ = ["ENV_NAMES", "Settings"]

#: Setting name -> environment / ``app.config`` name (the ``FILE_URL_*`` settings).
ENV_NAMES: dict[str, str] = {
    "redis": "REDIS_URL",
    "cache_ttl": "FILE_URL_CACHE_TIMEOUT",
    "key_prefix": "FILE_URL_CACHE_KEY_PREFIX",
    "url_ttl": "FILE_URL_EXPIRES",
    "local_cache_size": "FILE_URL_LOCAL_CACHE_SIZE",
    "socket_timeout": "FILE_URL_REDIS_TIMEOUT",
    "history_points": "FILE_URL_HISTORY_POINTS",
    "history_interval": "FILE_URL_HISTORY_INTERVAL",
}

_INT_SETTINGS = ("cache_ttl", "url_ttl", "local_cache_size", "history_points", "history_interval")
#: The longest history a prefix may keep, in points (69 days at one point a minute).
MAX_HISTORY_POINTS = 100_000
_FLOAT_SETTINGS = ("socket_timeout",)
_UNITS = {"local_cache_size": "entries", "history_points": "points"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every tunable of :class:`~sqla_signed_urls.SignedURLs`, validated on construction.

    >>> Settings(cache_ttl=2700, url_ttl=14400).min_validity
    11700
    """

    #: Seconds a URL stays in the cache (``FILE_URL_CACHE_TIMEOUT``).
    cache_ttl: int = 2700
    #: Seconds a signed URL is valid (``FILE_URL_EXPIRES``).
    url_ttl: int = 14400
    #: Prefix of every Redis key (``FILE_URL_CACHE_KEY_PREFIX``).
    key_prefix: str = "file_url:"
    #: Entries in the in-process layer; 0 turns it off.
    local_cache_size: int = 10_000
    #: Expiries are rounded down to a multiple of this many seconds (default: cache_ttl // 10).
    url_window: int | None = None
    #: Redis TTLs are shortened by a random amount up to this fraction of cache_ttl.
    ttl_jitter: float = 0.1
    #: Redis socket and connect timeout in seconds, for clients built from a URL.
    socket_timeout: float = 0.25
    #: Seconds to skip Redis after a failure before probing it again (circuit breaker).
    retry_after: float = 5.0
    #: Points of fleet history kept under ``<prefix>#history`` (``FILE_URL_HISTORY_POINTS``;
    #: 24 h at one a minute); 0 records none.
    history_points: int = 1440
    #: Seconds between two history points (``FILE_URL_HISTORY_INTERVAL``).
    history_interval: int = 60

    def __post_init__(self) -> None:
        for name in _INT_SETTINGS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                unit = _UNITS.get(name, "seconds")
                raise ConfigurationError(f"{name}={value!r}: expected a whole number of {unit}")
        if self.cache_ttl <= 0 or self.url_ttl <= 0:
            raise ConfigurationError(
                f"cache_ttl={self.cache_ttl!r}, url_ttl={self.url_ttl!r}: both must be positive"
            )
        if self.cache_ttl >= self.url_ttl:
            raise ConfigurationError(
                f"cache_ttl={self.cache_ttl} must be shorter than url_ttl={self.url_ttl}: a cached "
                "URL has to stay valid for a while after it is served (defaults: 2700 and 14400)"
            )
        if self.local_cache_size < 0:
            raise ConfigurationError(
                f"local_cache_size={self.local_cache_size!r}: use 0 to turn the layer off"
            )
        if not 0 <= self.history_points <= MAX_HISTORY_POINTS:
            raise ConfigurationError(
                f"history_points={self.history_points!r}: expected 0 (no history) .. "
                f"{MAX_HISTORY_POINTS}"
            )
        if not 1 <= self.history_interval <= 86_400:
            raise ConfigurationError(
                f"history_interval={self.history_interval!r}: expected 1 .. 86400 seconds"
            )
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ConfigurationError(f"key_prefix={self.key_prefix!r}: expected a non-empty str")
        if any(c in self.key_prefix for c in "*?[]\\ #"):
            raise ConfigurationError(
                f"key_prefix={self.key_prefix!r}: must not contain glob characters, '#' or spaces"
            )
        window = self.url_window
        if window is not None and (
            not isinstance(window, int)
            or window <= 0
            or window > self.cache_ttl // 10
            or window < 1
        ):
            raise ConfigurationError(
                f"url_window={window!r}: expected 1 .. cache_ttl // 10 ({self.cache_ttl // 10}) "
                "seconds, or None for the default"
            )
        if not 0.0 <= self.ttl_jitter <= 0.1:
            raise ConfigurationError(f"ttl_jitter={self.ttl_jitter!r}: expected 0.0 .. 0.1")
        for name in ("socket_timeout", "retry_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{name}={value!r}: expected a positive number of seconds")

    @property
    def window(self) -> int:
        """Seconds that URL expiries are rounded down to."""
        return self.url_window if self.url_window is not None else max(1, self.cache_ttl // 10)

    @property
    def min_validity(self) -> int:
        """A URL is never served with less validity left than this."""
        return self.url_ttl - self.cache_ttl

    @classmethod
    def merge(cls, settings: Settings | None = None, **options: Any) -> Settings:
        """``settings`` (or the defaults) with ``options`` applied on top, validated.

        >>> Settings.merge(Settings(cache_ttl=600), url_ttl=3600).url_ttl
        3600
        """
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigurationError(
                f"settings={settings!r}: expected a sqla_signed_urls.Settings "
                "(Settings.from_env() or Settings(...))"
            )
        unknown = sorted(set(options) - _FIELDS)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
            )
        if settings is None:
            return cls(**options)
        return dataclasses.replace(settings, **options) if options else settings

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> tuple[Settings, Any]:
        """Read settings from environment-style names; return them and the ``REDIS_URL`` value.

        Values may be strings (the environment) or already typed (``app.config``).
        """
        values: dict[str, Any] = {}
        redis_url = mapping.get(ENV_NAMES["redis"]) or None
        for name, env_name in ENV_NAMES.items():
            raw = mapping.get(env_name)
            if name == "redis" or raw is None or raw == "":
                continue
            values[name] = _parse(name, env_name, raw)
        redis_url = overrides.pop("redis", redis_url)
        values.update(overrides)
        return cls.merge(None, **values), redis_url

    @classmethod
    def from_env(cls, **overrides: Any) -> tuple[Settings, Any]:
        """:meth:`from_mapping` over ``os.environ``."""
        return cls.from_mapping(os.environ, **overrides)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))


def _parse(name: str, env_name: str, raw: Any) -> Any:
    if name in _INT_SETTINGS:
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"{env_name}={raw!r}: expected a whole number ({name})"
            ) from None
    if name in _FLOAT_SETTINGS:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{env_name}={raw!r}: expected a number ({name})") from None
    return raw
