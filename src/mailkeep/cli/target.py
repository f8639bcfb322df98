"""Where an administrative command runs: in the running server (HTTP API) or on the files.

ARCHITECTURE §10: one writer per storage group. While ``mailkeep serve`` runs on the data
folder (``serve.json`` names a live process), commands go through its HTTP API, as the service
account (the token in ``serve.token``, readable only by whoever owns the data folder) or, with
``--user``/``MAILKEEP_USER``, as a directory account whose roles the server checks. Otherwise
they open the files themselves, which needs the data folder's owner anyway.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mailkeep.admin.registry import Context, invoke, load
from mailkeep.admin.roles import SERVICE

STATE = "serve.json"
TOKEN = "serve.token"


class RemoteError(Exception):
    """The server refused or failed a call; ``str()`` is its message."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body.get("message") or body))


class NotRunning(Exception):
    pass


def running_server(data: str) -> dict[str, Any] | None:
    """The live server's ``serve.json``, or None when none runs (a stale file is ignored)."""
    try:
        with open(os.path.join(data, STATE), encoding="utf-8") as f:
            state: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, KeyError, ValueError, TypeError):
        pass  # another user's live process: still running
    return state if "http" in state else None


class Remote:
    def __init__(self, url: str, auth: str, *, where: str = "", cafile: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.where = where
        self.context = tls_client(cafile)
        self.ops = load()

    @classmethod
    def for_data(cls, data: str, state: dict[str, Any], user: str | None) -> Remote:
        host = state.get("bind") or "127.0.0.1"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if state.get("https") else "http"
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{state['http']}"
        if user:
            password = os.environ.get("MAILKEEP_PASSWORD")
            if password is None:
                password = getpass.getpass(f"Password for {user}: ")
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        else:
            try:
                with open(os.path.join(data, TOKEN), encoding="utf-8") as f:
                    auth = "Bearer " + f.read().strip()
            except PermissionError:
                raise RemoteError(401, {"message": f"the server (pid {state['pid']}) is running and its service "
                                        f"token in {data} is not readable by you: give --user NAME (a directory "
                                        "account; its password from $MAILKEEP_PASSWORD or a prompt)"}) from None
        return cls(url, auth, where=f"the running server (pid {state['pid']})",
                   cafile=os.path.join(data, "tls", "cert.pem") if state.get("https") else None)

    def call(self, name: str, args: dict[str, Any]) -> Any:
        op = self.ops[name]
        args = {k: v for k, v in args.items() if v is not None}
        path_args = {k: args.pop(k) for k in op.path_params}
        url = self.url + op.url(path_args)
        data = None
        headers = {"Authorization": self.auth, "Accept": "application/json"}
        if op.method in ("GET", "DELETE"):
            if args:
                url += "?" + urllib.parse.urlencode({k: _q(v) for k, v in args.items()})
        else:
            data = json.dumps(args).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=op.method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=3600, context=self.context) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except ValueError:
                body = {"message": f"HTTP {e.code} {e.reason}"}
            raise RemoteError(e.code, body) from None
        except urllib.error.URLError as e:
            raise RemoteError(0, {"message": f"{self.where} does not answer at {self.url} ({e.reason}); "
                                  "if it is stopping, run the command again once it has stopped"}) from None

    def close(self) -> None:
        pass


def tls_client(cafile: str | None) -> ssl.SSLContext:
    """Trust ``cafile`` (a server's own certificate, or its CA), else ``$MAILKEEP_CAFILE``, else
    the system's trust store."""
    cafile = cafile or os.environ.get("MAILKEEP_CAFILE") or None
    return ssl.create_default_context(cafile=cafile)


def _q(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


class Local:
    """The files, opened by this process (no server running)."""

    def __init__(self, data: str) -> None:
        load()
        self.ctx = Context(SERVICE, data, local=True)

    def call(self, name: str, args: dict[str, Any]) -> Any:
        return invoke(self.ctx, name, args)

    def close(self) -> None:
        self.ctx.close()


def target(data: str, user: str | None = None) -> Remote | Local:
    user = user or os.environ.get("MAILKEEP_USER") or None
    state = running_server(data)
    if state is not None:
        return Remote.for_data(data, state, user)
    if user:
        print(f"mailkeep: no server is running on {data}; --user is ignored and the files are opened directly",
              file=sys.stderr)
    return Local(data)
