"""SubjectAccessReview → (Azure data action id, scope), the mapping guard uses (REFERENCE §2).

Pure and explicit so it can be tested as a table. Role definitions name data
actions like `Microsoft.Kubernetes/connectedClusters/apps/deployments/write`; the
review's verb, group and resource are spelled into that shape, and the scope is
the cluster resource or one of its namespaces.

Choices where guard is silent or weak, on purpose:

- An unknown verb is `Unmappable` with a reason (guard emits an id that ends at
  the resource); the provider turns it into Deny or NoOpinion by configuration.
- `pods/exec` → `pods/exec/action` for any verb (guard). `pods/attach` and
  `pods/portforward` → `pods/write` for any verb: they are as interactive as
  exec, and a websocket upgrade arrives as verb `get`, which must never become
  `pods/read` (guard ignores these subresources, so `get pods/attach` reads as
  `pods/read` there). Every other subresource is ignored (guard).
- Wildcards (`*` verb, resource or group) stay literal `*` segments in the id: a
  literal `*` is only granted by a role whose pattern covers that whole segment
  (e.g. `connectedClusters/*`), so a wildcard question needs wildcard permission.
  guard expands wildcards through API discovery; without discovery the literal
  form is the conservative answer. `wildcards="unmappable"` refuses them instead.
  A `*` inside a name (`pod*`) is not a wildcard Kubernetes sends: `Unmappable`.
- A namespace, group, resource or path that could break out of its segment of
  the scope or id (`/`, `..`, control characters) is `Unmappable`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from guard.reviews import NonResourceAttributes, ResourceAttributes, SubjectAccessReview

CONNECTED_CLUSTERS = "Microsoft.Kubernetes/connectedClusters"
MANAGED_CLUSTERS = "Microsoft.ContainerService/managedClusters"

RESOURCE_VERBS: dict[str, str] = {
    "get": "read",
    "list": "read",
    "watch": "read",
    "create": "write",
    "update": "write",
    "patch": "write",
    "delete": "delete",
    "deletecollection": "delete",
    "bind": "bind/action",
    "escalate": "escalate/action",
    "use": "use/action",
    "impersonate": "impersonate/action",
    "*": "*",
}

# Non-resource requests carry the lowercase HTTP method (get, head, post, put, patch, delete, options).
NON_RESOURCE_VERBS: dict[str, str] = {
    "get": "read",
    "head": "read",
    "list": "read",
    "watch": "read",
    "post": "write",
    "put": "write",
    "patch": "write",
    "create": "write",
    "update": "write",
    "delete": "delete",
    "*": "*",
}

# Subresources with an action of their own; None means "use the verb's action".
SUBRESOURCE_ACTIONS: dict[tuple[str, str], str] = {
    ("pods", "exec"): "pods/exec/action",
    ("pods", "attach"): "pods/write",
    ("pods", "portforward"): "pods/write",
}

_SEGMENT = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9.\-_*]*$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9.\-_~:@*+=,]+$")

Wildcards = Literal["literal", "unmappable"]


@dataclass(frozen=True)
class Mapped:
    """The data action to check and the scope to check it at."""

    action: str
    scope: str


@dataclass(frozen=True)
class Unmappable:
    """The review has no data action; `reason` says why (it goes into the SAR status)."""

    reason: str


@dataclass(frozen=True)
class ActionMapper:
    """Maps reviews for one cluster; `cluster_type` is the ARM type data actions are named under."""

    cluster_resource_id: str
    cluster_type: str = CONNECTED_CLUSTERS
    wildcards: Wildcards = "literal"

    def map(self, review: SubjectAccessReview) -> Mapped | Unmappable:
        if review.resource is not None:
            return self.map_resource(review.resource)
        if review.non_resource is not None:
            return self.map_non_resource(review.non_resource)
        return Unmappable("the review has neither resourceAttributes nor nonResourceAttributes")

    def map_resource(self, ra: ResourceAttributes) -> Mapped | Unmappable:
        # The object's name and the API version do not change the action: cached without them.
        return self._map_resource(ra.namespace, ra.verb, ra.group, ra.resource, ra.subresource)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one mapper per authorizer, as long-lived as the process)
    def _map_resource(
        self, namespace: str, raw_verb: str, raw_group: str, raw_resource: str, raw_subresource: str
    ) -> Mapped | Unmappable:
        verb = raw_verb.lower()
        resource = raw_resource.lower()
        group = raw_group.lower()
        subresource = raw_subresource.lower()
        if not resource:
            return Unmappable(f"resource request for verb {raw_verb!r} names no resource")
        for what, value in (("resource", resource), ("group", group), ("subresource", subresource)):
            if value and (not _SEGMENT.match(value) or ("*" in value and value != "*")):
                return Unmappable(f"{what} {value!r} is not a valid name")
        if self.wildcards == "unmappable" and "*" in (verb, resource, group):
            return Unmappable(f"wildcard in verb/group/resource ({verb} {group}/{resource}) is not mapped")
        if namespace and (not _SEGMENT.match(namespace) or "*" in namespace):
            return Unmappable(f"namespace {namespace!r} is not a valid name")
        special = None if group else SUBRESOURCE_ACTIONS.get((resource, subresource))
        if special is not None and verb in RESOURCE_VERBS:
            tail = special.split("/", 1)[1]
        else:
            action = RESOURCE_VERBS.get(verb)
            if action is None:
                return Unmappable(f"verb {raw_verb!r} has no Azure data action")
            tail = action
        prefix = f"{self.cluster_type}/{group}" if group else self.cluster_type
        scope = self.cluster_resource_id
        if namespace:
            scope = f"{scope}/namespaces/{namespace}"
        return Mapped(f"{prefix}/{resource}/{tail}", scope)

    def map_non_resource(self, nra: NonResourceAttributes) -> Mapped | Unmappable:
        verb = nra.verb.lower()
        action = NON_RESOURCE_VERBS.get(verb)
        if action is None:
            return Unmappable(f"verb {nra.verb!r} has no Azure data action for non-resource paths")
        segments = [s for s in nra.path.strip("/").split("/") if s]
        if not nra.path.startswith("/") or not segments:
            return Unmappable(f"non-resource path {nra.path!r} has no data action")
        if any(s in (".", "..") or not _PATH_SEGMENT.match(s) or ("*" in s and s != "*") for s in segments):
            return Unmappable(f"non-resource path {nra.path!r} is not a plain path")
        if self.wildcards == "unmappable" and (verb == "*" or any("*" in s for s in segments)):
            return Unmappable(f"wildcard in non-resource request ({verb} {nra.path}) is not mapped")
        return Mapped(f"{self.cluster_type}/{'/'.join(segments)}/{action}", self.cluster_resource_id)


def map_review(
    review: SubjectAccessReview, cluster_resource_id: str, cluster_type: str = CONNECTED_CLUSTERS
) -> Mapped | Unmappable:
    """Convenience for one-off mapping with the default wildcard handling."""
    return ActionMapper(cluster_resource_id, cluster_type).map(review)
