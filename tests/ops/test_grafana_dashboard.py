"""``docs/grafana-dashboard.json``: a Grafana dashboard that queries only what the Prometheus
collector (``sqla_signed_urls.metrics``) exports, with the labels it exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import CacheService, SignedURLs
from sqla_signed_urls.metrics import register

from ..conftest import add_files, cache_files

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bsqla_signed_urls_[a-z_]+\b")
SELECTOR = re.compile(r"\{([^}]*)\}")


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard (panel targets and template queries)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def exported(urls: SignedURLs, db: sessionmaker[Session]) -> tuple[set[str], set[str]]:
    """Sample names and label names the collector exports, in both modes, after some reads."""
    cache_files(urls, db, add_files(db, "a.png", "b.png"))
    process, fleet = CollectorRegistry(), CollectorRegistry()
    collectors = [
        register(urls, registry=process),
        register(CacheService(urls), fleet=True, registry=fleet),
    ]
    names: set[str] = set()
    labels: set[str] = set()
    for collector in collectors:  # every series, also those without a value here (memory)
        for family in collector.describe():
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    for registry in (process, fleet):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                names.add(sample.name)
                labels.update(sample.labels)
    return names, labels


def test_every_metric_the_dashboard_queries_is_exported(
    urls: SignedURLs, db: sessionmaker[Session]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(expressions(dashboard))
    names, labels = exported(urls, db)

    queried = {name for query in queries for name in METRIC.findall(query)}
    assert queried, "the dashboard queries no metric"
    assert queried <= names, f"not exported: {sorted(queried - names)}"
    used_labels = {
        part.split("=")[0].strip().rstrip("!~")
        for query in queries
        for selector in SELECTOR.findall(query)
        for part in selector.split(",")
        if "=" in part
    }
    assert used_labels <= labels, f"labels not exported: {sorted(used_labels - labels)}"
    # the headline figures are there
    for name in (
        "sqla_signed_urls_cache_hits_total",
        "sqla_signed_urls_cache_misses_total",
        "sqla_signed_urls_urls_signed_total",
        "sqla_signed_urls_cached_keys",
        "sqla_signed_urls_redis_memory_used_bytes",
        "sqla_signed_urls_breaker_opened_total",
    ):
        assert name in queried


def test_the_dashboard_is_an_importable_grafana_model() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["title"] and panel["type"] in ("stat", "timeseries")
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"] and all(target["expr"] for target in panel["targets"])
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "key_prefix"
    for query in expressions(panels):
        assert 'key_prefix=~"$key_prefix"' in query, query


def test_the_json_file_is_formatted_as_committed() -> None:
    text = DASHBOARD.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
