"""A Kubernetes apiserver stand-in for tests: real HTTPS, real Status errors, enough for real kubectl.

No apiserver can be installed from the package registries here, so tests run the
agents, guard, the tunnel and helm against this. It grows with what they need; today it
serves discovery and OpenAPI v2 and v3, namespaces, nodes, pods, configmaps, secrets,
services, serviceaccounts and deployments (`resources.py`, `workloads.py`,
`services.py`), roles, rolebindings, clusterroles and clusterrolebindings (`rbac.py`),
CustomResourceDefinitions and the kinds they define, served at once (`crds.py`),
watch, JSON and protobuf bodies, every patch type with field ownership and server-side
apply (`patch.py`, `managed.py`), pod logs, and exec/attach/port-forward over websockets
and direct SPDY upgrades, on HTTP/1.1 and HTTP/2 (ALPN, as a real apiserver). Tests
drive the pods' side through `ApiServer` (add_pod, append_log, end_logs, write_file,
read_file, set_port_forward_target).
"""

from tests.apiserver.kubeconfig import kubeconfig, write_kubeconfig
from tests.apiserver.server import ApiServer, NodeSpec

__all__ = ["ApiServer", "NodeSpec", "kubeconfig", "write_kubeconfig"]
