"""A Kubernetes apiserver stand-in for tests: real HTTPS, real Status errors, enough for real kubectl.

No apiserver can be installed from the package registries here, so tests run the
agents, guard and the tunnel against this. It grows with what they need; today it
serves discovery, namespaces, nodes and secrets (see `resources.py`).
"""

from tests.apiserver.kubeconfig import kubeconfig, write_kubeconfig
from tests.apiserver.server import ApiServer, NodeSpec

__all__ = ["ApiServer", "NodeSpec", "kubeconfig", "write_kubeconfig"]
