"""Impersonation mode (Arc's kube-aad-proxy) for clusters whose apiserver cannot call guard's webhook.

`requestinfo` derives Kubernetes request attributes from HTTP the way the
apiserver does; `headers` holds the header rules and Status bodies; `upstream`
loads the proxy's own apiserver credential; `proxy` is the TLS server;
`serving` keeps its hub-issued serving certificate renewed; `service` runs them
together for `kubearc guard proxy`.
"""

from guard.impersonation.proxy import ImpersonatingProxy, ProxySettings
from guard.impersonation.requestinfo import RequestInfo, RequestInfoError, request_info
from guard.impersonation.upstream import Upstream, client_context, upstream_from_kube

__all__ = [
    "ImpersonatingProxy",
    "ProxySettings",
    "RequestInfo",
    "RequestInfoError",
    "Upstream",
    "client_context",
    "request_info",
    "upstream_from_kube",
]
