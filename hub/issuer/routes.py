"""The local issuer's HTTP surface: OpenID Connect endpoints and the Graph-compatible directory."""

from __future__ import annotations

from starlette.routing import BaseRoute

from hub.issuer import graph, oauth

routes: list[BaseRoute] = [*oauth.routes, *graph.routes]
