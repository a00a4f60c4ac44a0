"""The lighter in-cluster agents (identity, metadata, ...), each run as `kubearc agent <name>`.

Agents talk to the hub only over HTTPS (`agents.hubclient`) and to Kubernetes
only through the `kubernetes` client (`foundation.kube`); they import no other
kubearc part besides the foundation modules in `kubearc/`.
"""

from foundation import __version__ as AGENT_VERSION

__all__ = ["AGENT_VERSION"]
