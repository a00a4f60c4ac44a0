"""Built-in role definitions: Arc's Kubernetes roles exactly as Azure defines them
(REFERENCE section 3), plus the generic Azure control-plane roles users expect.

The ids are Azure's own role definition GUIDs, so scripts written for Azure work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.resources import scope_key, scope_within

CC = "Microsoft.Kubernetes/connectedClusters"


@dataclass(frozen=True)
class Role:
    id: str
    name: str
    description: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()
    assignable_scopes: tuple[str, ...] = field(default=("/",))
    builtin: bool = True

    def to_arm(self, scope: str = "/") -> dict[str, object]:
        """The ARM object; its id is qualified by the subscription of `scope`, as ARM does."""
        return {
            "id": definition_id(self.id, scope),
            "name": self.id,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": self.name,
                "description": self.description,
                "type": "BuiltInRole" if self.builtin else "CustomRole",
                "permissions": [
                    {
                        "actions": list(self.actions),
                        "notActions": list(self.not_actions),
                        "dataActions": list(self.data_actions),
                        "notDataActions": list(self.not_data_actions),
                    }
                ],
                "assignableScopes": list(self.assignable_scopes),
            },
        }

    def assignable_at(self, scope: str) -> bool:
        """May the role be assigned at `scope` (at or below one of its assignable scopes)?"""
        key = scope_key(scope)
        return any(scope_within(key, scope_key(s)) for s in self.assignable_scopes)


def definition_id(role_id: str, scope: str = "/") -> str:
    """`[/subscriptions/{sub}]/providers/Microsoft.Authorization/roleDefinitions/{guid}`."""
    parts = scope.strip("/").split("/")
    prefix = f"/subscriptions/{parts[1]}" if len(parts) >= 2 and parts[0].lower() == "subscriptions" else ""
    return f"{prefix}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"


def _on(resources: list[str], suffix: str) -> tuple[str, ...]:
    return tuple(f"{CC}/{r}/{suffix}" for r in resources)


_VIEWER_RESOURCES = [
    "apps/controllerrevisions",
    "apps/daemonsets",
    "apps/deployments",
    "apps/replicasets",
    "apps/statefulsets",
    "autoscaling/horizontalpodautoscalers",
    "batch/cronjobs",
    "batch/jobs",
    "configmaps",
    "endpoints",
    "events.k8s.io/events",
    "events",
    "extensions/daemonsets",
    "extensions/deployments",
    "extensions/ingresses",
    "extensions/networkpolicies",
    "extensions/replicasets",
    "limitranges",
    "namespaces",
    "networking.k8s.io/ingresses",
    "networking.k8s.io/networkpolicies",
    "persistentvolumeclaims",
    "pods",
    "policy/poddisruptionbudgets",
    "replicationcontrollers",
    "resourcequotas",
    "serviceaccounts",
    "services",
]
_WRITER_ALL = [
    "apps/daemonsets",
    "apps/deployments",
    "apps/replicasets",
    "apps/statefulsets",
    "autoscaling/horizontalpodautoscalers",
    "batch/cronjobs",
    "batch/jobs",
    "configmaps",
    "endpoints",
    "extensions/daemonsets",
    "extensions/deployments",
    "extensions/ingresses",
    "extensions/networkpolicies",
    "extensions/replicasets",
    "networking.k8s.io/ingresses",
    "networking.k8s.io/networkpolicies",
    "persistentvolumeclaims",
    "pods",
    "policy/poddisruptionbudgets",
    "replicationcontrollers",
    "secrets",
    "serviceaccounts",
    "services",
]
_WRITER_READ = ["events.k8s.io/events", "events", "limitranges", "namespaces", "resourcequotas"]
_WRITER_DATA = (
    f"{CC}/apps/controllerrevisions/read",
    *_on(_WRITER_ALL, "*"),
    *_on(_WRITER_READ, "read"),
)
_ARC_READER_ACTIONS = (
    "Microsoft.Authorization/*/read",
    "Microsoft.Resources/subscriptions/operationresults/read",
    "Microsoft.Resources/subscriptions/read",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    f"{CC}/read",
)

ARC_VIEWER = Role(
    "63f0a09d-1495-4db4-a681-037d84835eb4",
    "Azure Arc Kubernetes Viewer",
    "Lets you view all resources in cluster/namespace, except secrets.",
    actions=_ARC_READER_ACTIONS,
    data_actions=_on(_VIEWER_RESOURCES, "read"),
)
ARC_WRITER = Role(
    "5b999177-9696-4545-85c7-50de3797e5a1",
    "Azure Arc Kubernetes Writer",
    "Lets you update everything in cluster/namespace, except (cluster)roles and (cluster)role bindings.",
    actions=_ARC_READER_ACTIONS,
    data_actions=_WRITER_DATA,
)
ARC_ADMIN = Role(
    "dffb1e0c-446f-4dde-a09f-99eb5cc68b96",
    "Azure Arc Kubernetes Admin",
    "Lets you manage all resources under cluster/namespace, except update or delete resource "
    "quotas and namespaces.",
    actions=_ARC_READER_ACTIONS,
    data_actions=(
        *_WRITER_DATA,
        f"{CC}/authorization.k8s.io/localsubjectaccessreviews/write",
        f"{CC}/rbac.authorization.k8s.io/rolebindings/*",
        f"{CC}/rbac.authorization.k8s.io/roles/*",
    ),
)
ARC_CLUSTER_ADMIN = Role(
    "8393591c-06b9-48a2-a542-1bd6b377f6a2",
    "Azure Arc Kubernetes Cluster Admin",
    "Lets you manage all resources in the cluster.",
    actions=_ARC_READER_ACTIONS,
    data_actions=(f"{CC}/*",),
)
ARC_CLUSTER_USER = Role(
    "00493d72-78f6-4148-b6c5-d3ce8e4799dd",
    "Azure Arc Enabled Kubernetes Cluster User Role",
    "List cluster user credentials action.",
    actions=(
        "Microsoft.Resources/deployments/write",
        "Microsoft.Resources/subscriptions/operationresults/read",
        "Microsoft.Resources/subscriptions/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        f"{CC}/listClusterUserCredential/action",
    ),
)
ARC_ONBOARDING = Role(
    "34e09817-6cbe-4d01-b1a2-e0eac5743d41",
    "Kubernetes Cluster - Azure Arc Onboarding",
    "Role definition to authorize any user/service to create connectedClusters resource.",
    actions=(
        "Microsoft.Resources/subscriptions/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        f"{CC}/Write",
        f"{CC}/read",
    ),
)
OWNER = Role(
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Owner",
    "Grants full access to manage all resources, including assigning roles.",
    actions=("*",),
)
CONTRIBUTOR = Role(
    "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Contributor",
    "Grants full access to manage all resources, but does not allow you to assign roles.",
    actions=("*",),
    not_actions=(
        "Microsoft.Authorization/*/Delete",
        "Microsoft.Authorization/*/Write",
        "Microsoft.Authorization/elevateAccess/Action",
    ),
)
READER = Role(
    "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "Reader",
    "View all resources.",
    actions=("*/read",),
)

ARC_KUBERNETES_ROLES: tuple[Role, ...] = (
    ARC_VIEWER,
    ARC_WRITER,
    ARC_ADMIN,
    ARC_CLUSTER_ADMIN,
    ARC_CLUSTER_USER,
)
BUILTIN_ROLES: tuple[Role, ...] = (*ARC_KUBERNETES_ROLES, ARC_ONBOARDING, OWNER, CONTRIBUTOR, READER)
BUILTIN_BY_ID = {r.id: r for r in BUILTIN_ROLES}
BUILTIN_BY_NAME = {r.name.lower(): r for r in BUILTIN_ROLES}
