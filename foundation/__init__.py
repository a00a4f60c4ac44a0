"""The foundation: helpers every part of kubearc shares, and the wire contract between parts.

Settings, PKI, token signing and verification, OIDC verification, kubeconfig files,
logging, metrics, retry, the identity store and the wire contract (`wire`) live
here. The foundation imports no part (`hub`, `proxy`, `guard`, `agents`) and not
the command line (`kubearc`); `tests/test_layers.py` keeps that true.
"""

__version__ = "0.1.0"
