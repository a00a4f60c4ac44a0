"""kubearc: outbound-only cluster connect, Entra ID sign-in and Azure-RBAC-style authorization."""

__version__ = "0.1.0"
