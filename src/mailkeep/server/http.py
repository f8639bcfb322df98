"""The HTTP API: administration as JSON over HTTP, described by an OpenAPI document.

Every route is an :class:`~mailkeep.admin.registry.Operation`; this module only authenticates,
turns a request into the operation's arguments and its outcome into a response.

Invariants:
- Every call but ``GET /api/v1/openapi.json`` is authenticated: HTTP Basic against the
  directory (refused from a non-loopback client without TLS: passwords never cross a network
  in the clear), or ``Bearer`` with the service token the server writes to
  ``<data>/serve.token`` (mode 0600) for administrative commands run on the machine itself.
- The role check happens in :func:`registry.invoke`, for every call, before anything runs.
- Administrative operations run one at a time, in a worker thread (the store API blocks).
- Errors are JSON ``{"error": NAME, "message": TEXT}`` with a status saying whose fault it is:
  400 bad parameters, 401 no or wrong credentials, 403 missing role (the message names it),
  404 no such object, 409 refused by the store's rules, 500 a bug (the server logs it).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import logging
import threading
import time
import traceback
from typing import Any

from aiohttp import web

from mailkeep import __version__
from mailkeep.admin import roles
from mailkeep.admin.registry import BadRequest, Context, Operation, invoke, load
from mailkeep.admin.roles import AccessDenied, Caller, Role
from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.server.tcp import LoopThread, is_loopback
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError
from mailkeep.store.store import Store

log = logging.getLogger("mailkeep.http")
CACHE_SECONDS = 60.0  # a verified password is not re-hashed (scrypt) on every call for this long
MAX_BODY = 1 << 20
BACKUP_PATH = "/api/v1/backup/stream"


class ApiServer(LoopThread):
    """aiohttp on its own event loop in a thread, like the mail protocols' servers."""

    def __init__(self, store: Store, host: str, port: int, *, token: str, ssl_context: Any = None) -> None:
        super().__init__()
        self.store = store
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self.ops = load()
        self._admin = threading.Lock()
        self._streams: set[threading.Event] = set()  # one per backup being streamed
        self._cache: dict[tuple[str, bytes], tuple[float, str]] = {}  # -> (when verified, account DN)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/api/v1/openapi.json", self._openapi)
        app.router.add_post(BACKUP_PATH, self._backup_stream)
        for op in self.ops.values():
            app.router.add_route(op.method, op.path, self._handler(op))
        return app

    async def _open(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True)
        await site.start()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        for gone in list(self._streams):  # streamed backups end now, as failed
            gone.set()
        self.store.abort_backups("the server is stopping")
        super().stop()

    # -- authentication ----------------------------------------------------------------------
    def _caller(self, request: web.Request) -> Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            if hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return roles.SERVICE
            raise _Unauthorized("the token is not this server's service token (it changes at every start)")
        if scheme.lower() != "basic":
            raise _Unauthorized("give a user name and password (HTTP Basic authentication)")
        if request.transport is not None and request.transport.get_extra_info("sslcontext") is None:
            peer = request.remote or ""
            if not is_loopback(peer):
                raise _Unauthorized("passwords are accepted only over HTTPS or from this machine")
        try:
            name, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            raise _Unauthorized("malformed Basic credentials") from None
        key = (name.lower(), hashlib.sha256(password.encode()).digest())
        now = time.monotonic()
        d = self.store.directory
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            user = d.get(hit[1])  # the password was verified recently; the account's state is read now
        else:
            user = d.authenticate(name, password)
            if user is not None:
                if len(self._cache) > 1000:
                    self._cache.clear()
                self._cache[key] = (now, user.dn)
        if user is None or d.is_disabled(user):
            self._cache.pop(key, None)
            raise _Unauthorized(f"wrong user name or password, or the account {name!r} is disabled")
        return roles.caller_for(d, user)  # roles as they are now (a revoked role is gone at once)

    # -- requests ----------------------------------------------------------------------------
    def _handler(self, op: Operation) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                caller = await asyncio.to_thread(self._caller, request)
                args: dict[str, Any] = dict(request.query)
                if request.method in ("POST", "PATCH", "PUT") and request.can_read_body:
                    try:
                        body = await request.json()
                    except json.JSONDecodeError:
                        raise BadRequest("the request body is not JSON") from None
                    if not isinstance(body, dict):
                        raise BadRequest("the request body must be a JSON object")
                    args.update(body)
                args.update(request.match_info)
                result = await asyncio.to_thread(self._invoke, caller, op, args)
                return web.json_response(result, dumps=_dumps)
            except _Unauthorized as e:
                return _error(401, "Unauthorized", str(e), headers={"WWW-Authenticate": 'Basic realm="Mailkeep"'})
            except AccessDenied as e:
                return _error(403, "AccessDenied", str(e), needed=[r.value for r in e.needed])
            except BadRequest as e:
                return _error(400, "BadRequest", str(e))
            except web.HTTPException:
                raise
            except Exception as e:  # noqa: BLE001 - every failure becomes a JSON answer
                return _failure(op, e)

        return handle

    def _invoke(self, caller: Caller, op: Operation, args: dict[str, Any]) -> Any:
        ctx = Context(caller, self.store.server.data, store=self.store)
        if not op.exclusive:  # long runs (a scheduled backup) must not hold up administration
            return invoke(ctx, op.name, args)
        with self._admin:
            return invoke(ctx, op.name, args)

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi(self.ops), dumps=_dumps)

    # -- remote backup (the guide's Remote Store option) -------------------------------------
    async def _backup_stream(self, request: web.Request) -> web.StreamResponse:
        """Stream a backup of this server's storage groups as a pax tar (backup/stream.py).
        Backpressure is TCP's: the producing thread blocks while the agent does not read
        (the checkpoint stays frozen, as the guide warns); an agent that disconnects ends the
        backup at once (the engine unfreezes and logs the failure)."""
        from mailkeep.backup import job

        try:
            caller = await asyncio.to_thread(self._caller, request)
            caller.require("stream a backup (backup.stream)", Role.BACKUP_OPERATOR)
            try:
                body = await request.json()
            except json.JSONDecodeError:
                raise BadRequest("the request body is not JSON") from None
            selection = body.get("selection") if isinstance(body, dict) else None
            kind = body.get("type", "normal") if isinstance(body, dict) else None
            if not isinstance(selection, list) or not selection or not all(isinstance(x, str) for x in selection):
                raise BadRequest("give 'selection': a list of backup-tree names, e.g. ['SERVER/Information Store']")
            if kind not in job.DATABASE_KINDS:
                raise BadRequest(f"'type' must be one of {', '.join(job.DATABASE_KINDS)}, not {kind!r}")
            key_password = body.get("key_password") if isinstance(body, dict) else None
            if key_password is not None and not isinstance(key_password, str):
                raise BadRequest("'key_password' must be a string")
            job.plan(self.store, selection)  # a wrong selection is a 400, before the stream starts
        except _Unauthorized as e:
            return _error(401, "Unauthorized", str(e), headers={"WWW-Authenticate": 'Basic realm="Mailkeep"'})
        except AccessDenied as e:
            return _error(403, "AccessDenied", str(e), needed=[r.value for r in e.needed])
        except (BadRequest, job.SelectionError) as e:
            return _error(400, "BadRequest", str(e))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        gone = threading.Event()
        fut = loop.run_in_executor(None, self._produce_backup, selection, kind, key_password, loop, queue, gone)
        try:
            while (chunk := await queue.get()) is not None:
                await resp.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            gone.set()
            while not fut.done():  # let the producer see it and end the backup
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.05)
            raise
        finally:
            gone.set()
        await fut
        await resp.write_eof()
        return resp

    def _produce_backup(self, selection: list[str], kind: str, key_password: str | None,
                        loop: asyncio.AbstractEventLoop,
                        queue: asyncio.Queue[bytes | None], gone: threading.Event) -> None:
        from mailkeep.backup import job, stream

        class Out:
            def write(self, b: bytes) -> int:
                fut = asyncio.run_coroutine_threadsafe(queue.put(bytes(b)), loop)
                while True:
                    if gone.is_set():
                        fut.cancel()
                        raise BrokenPipeError("the backup agent disconnected (or the server is stopping)")
                    try:
                        fut.result(timeout=1.0)
                        return len(b)
                    except concurrent.futures.TimeoutError:
                        if loop.is_closed() or not loop.is_running():
                            gone.set()

        self._streams.add(gone)
        src = job.source(self.store, selection, kind, key_password=key_password)
        try:
            stream.write_stream(src, Out())  # type: ignore[arg-type]  # write() is all tarfile uses
        except BaseException as e:
            src.close()  # ends a running storage group's backup as failed
            log.warning("backup stream of %s ended early: %s", ", ".join(selection), e)
        finally:
            self._streams.discard(gone)
            if not gone.is_set() and not loop.is_closed():
                try:
                    asyncio.run_coroutine_threadsafe(queue.put(None), loop).result(timeout=60)
                except (concurrent.futures.TimeoutError, RuntimeError):
                    pass


class _Unauthorized(Exception):
    pass


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _error(status: int, error: str, message: str, *, headers: dict[str, str] | None = None,
           **extra: Any) -> web.Response:
    return web.json_response({"error": error, "message": message, **extra}, status=status, headers=headers)


def _failure(op: Operation, e: Exception) -> web.Response:
    from mailkeep.backup.job import BackupFailed, SelectionError
    from mailkeep.backup.media import MediaError
    from mailkeep.backup.restore import RestoreError
    from mailkeep.backup.schedule import NoSuchJob
    from mailkeep.store.fti import FtiError

    if isinstance(e, NoSuchJob):
        return _error(404, "NotFound", str(e))
    if isinstance(e, (MediaError, BackupFailed, FtiError, RestoreError)):
        return _error(409, type(e).__name__, str(e))
    if isinstance(e, SelectionError):
        return _error(400, "BadRequest", str(e))
    if isinstance(e, DirectoryError):
        return _error(404 if e.result == "noSuchObject" else 409, "DirectoryError", str(e), result=e.result)
    if isinstance(e, StoreError):
        return _error(409, "StoreError", str(e), code=e.code, name=e.name)
    if isinstance(e, EseError):
        return _error(409, "EseError", str(e), code=e.number, name=e.name)
    if isinstance(e, (ConfigError, ValueError)):
        return _error(409 if isinstance(e, ConfigError) else 400, type(e).__name__, str(e))
    log.error("%s failed:\n%s", op.name, traceback.format_exc())
    return _error(500, "InternalError", f"{op.name} failed inside the server ({type(e).__name__}: {e}); "
                  "the server's output has the details")


def openapi(ops: dict[str, Operation]) -> dict[str, Any]:
    """OpenAPI 3.1 for the registry: one path item per route, parameters and roles documented."""
    paths: dict[str, dict[str, Any]] = {}
    for op in ops.values():
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in op.path_params]
        body: dict[str, Any] = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
        for p in op.params:
            schema: dict[str, Any] = {"type": p.type}
            if p.type == "array":
                schema["items"] = {"type": "string"}
            if p.enum:
                schema["enum"] = list(p.enum)
            if op.method in ("GET", "DELETE"):
                params.append({"name": p.name, "in": "query", "required": p.required, "schema": schema,
                               "description": p.doc})
            else:
                body["properties"][p.name] = {**schema, "description": p.doc} if p.doc else schema
                if p.required:
                    body["required"].append(p.name)
        who = " or ".join(r.title for r in op.roles) or "any account"
        item: dict[str, Any] = {
            "operationId": op.name, "summary": op.summary, "tags": [op.tag],
            "description": f"Needs the role: {who}.", "x-roles": [r.value for r in op.roles],
            "parameters": params,
            "responses": {
                "200": {"description": "done", "content": {"application/json": {}}},
                "401": {"description": "no or wrong credentials"},
                "403": {"description": f"the caller is not a {who}"},
            },
        }
        if op.method not in ("GET", "DELETE") and body["properties"]:
            item["requestBody"] = {"content": {"application/json": {"schema": body}}}
        paths.setdefault(op.path, {})[op.method.lower()] = item
    paths[BACKUP_PATH] = {"post": {
        "operationId": "backup.stream", "summary": "stream a backup of storage groups or databases (remote backup)",
        "tags": ["backup"], "description": "Needs the role: backup operator. The response is a pax tar stream: one "
        "member per file (pax headers MAILKEEP.role, MAILKEEP.meta), SUMMARY.json last.",
        "x-roles": [Role.BACKUP_OPERATOR.value], "parameters": [],
        "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "required": ["selection"], "properties": {
                "selection": {"type": "array", "items": {"type": "string"}},
                "type": {"type": "string", "enum": ["normal", "copy", "incremental", "differential"]}}}}}},
        "responses": {"200": {"description": "the backup stream", "content": {"application/x-tar": {}}},
                      "400": {"description": "bad selection or type"}, "401": {"description": "credentials"},
                      "403": {"description": "the caller is not a backup operator"}},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Mailkeep administration API", "version": __version__},
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                           "service": {"type": "http", "scheme": "bearer"}}},
        "security": [{"basic": []}, {"service": []}],
        "paths": paths,
    }
