"""What every hub-calling command shares: one request helper and one way to fail."""

from __future__ import annotations

from typing import Any, NoReturn

import typer


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def request_json(method: str, path: str, **kwargs: Any) -> Any:
    """Call the hub as the signed-in user; errors become a one-line message and exit 1."""
    import httpx  # here, not at the top: every command imports this module, few call the hub

    from kubearc.session import hub_client

    try:
        with hub_client() as client:
            params = {"api-version": "2024-01-01", **kwargs.pop("params", {})}
            response = client.request(method, path, params=params, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the hub: {exc}")
    except (RuntimeError, ValueError) as exc:
        fail(str(exc))
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        if response.status_code == 401:  # the hub refuses the saved token (garbage, or another hub's)
            fail(f"401: {message}: sign in again with `kubearc login`")
        fail(f"{response.status_code}: {message}")
    return response.json() if response.content else None


def subscription_or_fail(value: str | None) -> str:
    """The subscription to act in: the flag, $KUBEARC_SUBSCRIPTION, or the client config."""
    if value:
        return value
    from foundation.settings import load_client_config

    try:
        sub = load_client_config().get("subscription")
    except ValueError as exc:  # garbage in the saved session: signing in again rewrites it
        fail(f"{exc}: sign in again with `kubearc login --hub URL`")
    if not sub:
        fail("no subscription: pass --subscription or set KUBEARC_SUBSCRIPTION")
    return sub
