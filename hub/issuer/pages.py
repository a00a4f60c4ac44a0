"""The local issuer's few HTML pages: the device-code verification page and the sign-in page.

Plain forms, no script, no cookies: every form that approves something carries
the user's name and password, so there is no session to steal or ride. Every
value is escaped; the headers forbid framing (clickjacking) and caching.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from html import escape
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#222}"
    "label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.4rem;box-sizing:border-box}"
    "button{margin:1rem .5rem 0 0;padding:.4rem 1rem}.error{color:#a00}.what{background:#f4f4f4;"
    "padding:.6rem}code{font-size:1.1rem}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _error(message: str | None) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>' if message else ""


def _hidden(fields: Mapping[str, str]) -> str:
    return "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())


def _credentials(username: str) -> str:
    return (
        '<label for="username">User name</label>'
        f'<input id="username" name="username" autocomplete="username" value="{escape(username)}" required>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required>'
    )


def enter_code(action: str, error: str | None = None, status: int = 200, code: str = "") -> HTMLResponse:
    body = (
        "<p>Enter the code your device or command line shows.</p>"
        f"{_error(error)}"
        f'<form method="post" action="{escape(action)}">'
        '<label for="user_code">Code</label>'
        f'<input id="user_code" name="user_code" value="{escape(code)}" autocomplete="off" required>'
        "<button>Next</button></form>"
    )
    return _page("Sign in to a device", body, status)


def approve_device(
    action: str,
    user_code: str,
    client: str,
    resource: str,
    error: str | None = None,
    status: int = 200,
    username: str = "",
) -> HTMLResponse:
    body = (
        f'<p class="what"><b>{escape(client)}</b> asks to sign you in for <b>{escape(resource)}</b>.<br>'
        f"Code: <code>{escape(user_code)}</code></p>"
        "<p>Continue only if you started this sign-in yourself, on a device you trust.</p>"
        f"{_error(error)}"
        f'<form method="post" action="{escape(action)}">{_hidden({"user_code": user_code})}'
        f"{_credentials(username)}"
        '<button name="decision" value="approve">Sign in and approve</button>'
        '<button name="decision" value="deny">Deny</button></form>'
    )
    return _page("Approve the sign-in", body, status)


def device_done(approved: bool, client: str) -> HTMLResponse:
    if approved:
        return _page(
            "You are signed in",
            f"<p>You have signed in to <b>{escape(client)}</b> on your device. "
            "You can close this window.</p>",
        )
    return _page("Sign-in denied", "<p>The device was not signed in. You can close this window.</p>")


def sign_in(
    action: str,
    client: str,
    resource: str,
    error: str | None = None,
    status: int = 200,
    username: str = "",
) -> HTMLResponse:
    body = (
        f'<p class="what"><b>{escape(client)}</b> asks to sign you in for <b>{escape(resource)}</b>.</p>'
        f"{_error(error)}"
        f'<form method="post" action="{escape(action)}">{_credentials(username)}'
        "<button>Sign in</button></form>"
    )
    return _page("Sign in", body, status)


def form_post(redirect_uri: str, params: Mapping[str, str]) -> HTMLResponse:
    """`response_mode=form_post`: the answer posted to the redirect URI by the browser, not in its URL."""
    nonce = secrets.token_urlsafe(16)
    target = urlsplit(redirect_uri)
    headers = dict(HEADERS)
    headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; form-action {target.scheme}://{target.netloc}; "
        "frame-ancestors 'none'"
    )
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signing in</title></head>'
        f'<body><form method="post" action="{escape(redirect_uri)}">{_hidden(params)}'
        "<noscript><p>Script is off: press the button to finish signing in.</p>"
        "<button>Continue</button></noscript></form>"
        f'<script nonce="{nonce}">document.forms[0].submit()</script></body></html>'
    )
    return HTMLResponse(html, headers=headers)


def error(title: str, message: str, status: int = 400) -> HTMLResponse:
    return _page(title, f"{_error(message)}", status)
