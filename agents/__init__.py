"""The lighter in-cluster agents (identity, metadata, ...), each run as `kubearc agent <name>`.

Agents talk to the hub only over HTTPS (`agents.hubclient`) and to Kubernetes
only through the `kubernetes` client (`foundation.kube`); they import no other
kubearc part besides the foundation modules in `kubearc/`.
"""

import os

from foundation import __version__

# The version the chart deployed (its image tag), else this code's own.
AGENT_VERSION = os.environ.get("KUBEARC_AGENT_VERSION") or __version__

__all__ = ["AGENT_VERSION"]
