"""The HTTP client kubearc gives msal, for the hub's own issuer and for Entra ID alike.

Used by `kubearc login` (user sign-in) and by guard's Graph client and ARM
credential (an app's client-credentials token, `confidential_client`), so it
lives in the foundation.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msal
import requests
import requests.adapters


class _IssuerHttpClient(requests.Session):
    """The HTTP client msal uses (its documented `http_client` hook), fixing two problems.

    - requests ignores `Session.verify` when `$REQUESTS_CA_BUNDLE` is set (psf/requests#3829),
      as it often is on corporate machines, so the hub's CA would silently not be trusted.
      Here the session's `verify` wins; proxy variables still apply.
    - msal probes `https://<host>/common/userrealm/<user>` before a password grant and
      drops the authority's port; for an issuer on a non-443 port the probe is sent to
      that port (the hub answers it: managed accounts, never federated).
    """

    def __init__(self, verify: str | bool, authority: str) -> None:
        super().__init__()
        self.verify = verify
        self.mount("https://", requests.adapters.HTTPAdapter(max_retries=1))
        parts = urlsplit(authority)
        self._realm_prefix = (
            f"https://{(parts.hostname or '').lower()}/common/userrealm/"
            if parts.port not in (None, 443)
            else None
        )
        self._realm_base = f"https://{parts.netloc}/common/userrealm/"

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self._realm_prefix and isinstance(url, str) and url.lower().startswith(self._realm_prefix):
            url = self._realm_base + url[len(self._realm_prefix) :]
        kwargs.setdefault("timeout", 30)
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:  # a CA file of our own; else the environment's
            settings["verify"] = self.verify
        return settings


def issuer_http_client(verify: str | bool, authority: str) -> requests.Session:
    """The `http_client` kubearc gives msal for `authority` (see `_IssuerHttpClient`)."""
    return _IssuerHttpClient(verify, authority)


def confidential_client(
    client_id: str, secret: str, authority: str, oidc_authority: bool, ca_file: str | None, timeout: float
) -> msal.ConfidentialClientApplication:
    """An msal app for the client-credentials grant at an Entra tenant or a generic OIDC issuer
    (`oidc_authority`, e.g. the hub's local issuer), on kubearc's `http_client`."""
    verify: str | bool = ca_file or True
    where: dict[str, Any] = {"oidc_authority": authority} if oidc_authority else {"authority": authority}
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        verify=verify,
        # requests ignores `verify=` when $REQUESTS_CA_BUNDLE is set; kubearc's session does not.
        http_client=issuer_http_client(verify, authority),
        timeout=timeout,
        **where,
    )
