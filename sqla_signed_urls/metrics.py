"""Prometheus exporter: the cache counters, read at scrape time.

Nothing is added to the per-access path: the cache already counts in plain attributes, and
this collector reads those counters only when Prometheus scrapes. Needs the ``prometheus`` extra:
importing this module without ``prometheus_client`` raises
:class:`~sqla_signed_urls.ConfigurationError` naming ``pip install "sqla-signed-urls[prometheus]"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._extras import require

try:  # the `prometheus` extra
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError:
    require("prometheus_client", "prometheus", "sqla_signed_urls.metrics")
    raise

from .core import SignedURLs
from .exceptions import SignedURLError
from .service import CacheService

__all__ = ["CacheCollector", "register"]

#: counter name -> (metric name without ``_total``, help text)
_COUNTERS: dict[str, tuple[str, str]] = {
    "hits": ("cache_hits", "Signed URLs served from the cache."),
    "misses": ("cache_misses", "Lookups that found no usable cached URL."),
    "signed": ("urls_signed", "URLs produced by the signer."),
    "errors": ("cache_errors", "Redis operations that failed (URL signed directly)."),
    "sign_errors": ("sign_errors", "Signing attempts that raised."),
    "invalidations": ("invalidations", "Cached URLs dropped after commits."),
    "breaker_opened": ("breaker_opened", "Times the Redis circuit breaker opened."),
}


class CacheCollector(Collector):
    """Exposes hits, misses, signings, errors, invalidations and the hit ratio.

    ::

        from prometheus_client import start_http_server
        from sqla_signed_urls.metrics import CacheCollector

        REGISTRY.register(CacheCollector(urls))                  # this process's counters
        REGISTRY.register(CacheCollector(service, fleet=True))   # every process, from Redis

    By default the counters are this process's own (the Prometheus convention: sum them over
    instances in PromQL); a scrape costs no Redis command. With ``fleet=True`` (needs a
    :class:`CacheService`) a scrape reads the fleet-wide totals for the key prefix from Redis
    (three commands) and adds ``keys`` and ``memory_used_bytes`` gauges; scrape one instance
    only in that mode, or the totals are counted more than once. Every series carries a
    ``key_prefix`` label.
    """

    def __init__(
        self,
        source: SignedURLs | CacheService,
        *,
        fleet: bool = False,
        namespace: str = "sqla_signed_urls",
    ) -> None:
        self.service: CacheService | None
        if isinstance(source, CacheService):
            self.urls, self.service = source.urls, source
        elif isinstance(source, SignedURLs):
            self.urls, self.service = source, None
        else:
            raise TypeError(
                f"CacheCollector(source=...): expected SignedURLs or CacheService, "
                f"got {type(source).__name__}"
            )
        if fleet and self.service is None:
            raise TypeError("CacheCollector(fleet=True) needs a CacheService as its source")
        self.fleet = fleet
        self.namespace = namespace

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check names without a scrape (and, in fleet mode, without Redis).
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._read()))

    def _read(self) -> dict[str, Any]:
        if not self.fleet:
            counters: dict[str, Any] = dict(self.urls.stats.as_dict())
            counters["redis_up"] = 1 if self.urls.redis_available else 0
            return counters
        assert self.service is not None
        try:
            data = self.service.get_cache_stats()
        except SignedURLError:
            return {"redis_up": 0}
        data["redis_up"] = 1
        return data

    def _families(self, data: dict[str, Any] | None) -> Iterator[Metric]:
        prefix = self.urls.settings.key_prefix
        ns = self.namespace
        labels = ["key_prefix"]
        for counter, (name, doc) in _COUNTERS.items():
            family = CounterMetricFamily(f"{ns}_{name}", doc, labels=labels)
            if data is not None and counter in data:
                family.add_metric([prefix], float(data[counter]))
            yield family
        ratio = GaugeMetricFamily(
            f"{ns}_cache_hit_ratio", "hits / (hits + misses); 0 before any lookup.", labels=labels
        )
        if data is not None and "hits" in data:
            lookups = data["hits"] + data["misses"]
            ratio.add_metric([prefix], data["hits"] / lookups if lookups else 0.0)
        yield ratio
        up = GaugeMetricFamily(
            f"{ns}_redis_up",
            "1 while Redis answers (process mode: the circuit breaker is closed).",
            labels=labels,
        )
        if data is not None:
            up.add_metric([prefix], float(data["redis_up"]))
        yield up
        if self.fleet:
            keys = GaugeMetricFamily(f"{ns}_cached_keys", "Live cached URL entries.", labels=labels)
            memory = GaugeMetricFamily(
                f"{ns}_redis_memory_used_bytes", "Redis used_memory.", labels=labels
            )
            if data is not None and "keys" in data:
                keys.add_metric([prefix], float(data["keys"]))
                if data.get("memory_used_bytes") is not None:
                    memory.add_metric([prefix], float(data["memory_used_bytes"]))
            yield keys
            yield memory


def register(
    source: SignedURLs | CacheService,
    *,
    fleet: bool = False,
    registry: CollectorRegistry = REGISTRY,
) -> CacheCollector:
    """Build a :class:`CacheCollector` and register it (on the default registry)."""
    collector = CacheCollector(source, fleet=fleet)
    registry.register(collector)
    return collector
