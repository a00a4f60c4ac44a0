"""The impersonating proxy in Prometheus: its event counts, open connections and response latency.

Events are the proxy's own `stats` counter, read at scrape time: `forwarded`,
`upgraded`, `upstream connections`, and each refusal by its Status reason
(`Unauthorized`, `Forbidden`, `BadRequest`, ...), so an operator sees why users
are turned away without reading logs.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foundation.metrics import LATENCY_BUCKETS
from guard.impersonation.proxy import ImpersonatingProxy


class _ProxyCollector(Collector):
    def __init__(self, proxy: ImpersonatingProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "kubearc_aad_proxy_events",
            "Requests forwarded and upgraded, apiserver connections made, and refusals by reason.",
            labels=["event"],
        )
        for event, count in sorted(self.proxy.stats.items()):
            events.add_metric([event], count)
        yield events
        yield GaugeMetricFamily(
            "kubearc_aad_proxy_connections", "Client connections open.", value=self.proxy.connections
        )


def proxy_registry(proxy: ImpersonatingProxy) -> CollectorRegistry:
    """A registry exposing `proxy`; also starts timing its responses."""
    registry = CollectorRegistry()
    registry.register(_ProxyCollector(proxy))
    proxy.head_latency = Histogram(
        "kubearc_aad_proxy_response_head_seconds",
        "From a request's arrival to the apiserver's response head (authentication, authorization "
        "and the apiserver included).",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    return registry
