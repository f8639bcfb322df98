"""The administrative operations, one registry for the HTTP API, its OpenAPI document and the CLI.

Why one registry: ARCHITECTURE §10 says administrative commands reach a running server through
its HTTP API and work on the files directly when none runs. Both paths call the same
:class:`Operation` (locally with an open :class:`Store`, remotely through ``POST/GET`` on its
path), so a command behaves the same either way and the role check cannot be forgotten on one
of them.

Invariants:
- Every operation names the roles that may call it; :func:`invoke` checks them before the
  function runs (an empty ``roles`` means any authenticated account).
- Results are JSON values (dicts, lists, strings, numbers); a mutation's result has a
  ``message``: the sentence the CLI prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailkeep.admin.roles import Caller, Role
from mailkeep.directory.directory import Directory
from mailkeep.store.store import Store


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "string"  # JSON schema type: string, boolean, integer, number, array (of strings)
    required: bool = False
    doc: str = ""
    enum: tuple[str, ...] = ()


class Context:
    """What an operation runs with: the caller, the store (its directory, server config, event
    log) and whether the CLI opened the files itself (``local``: no server running). Locally
    the directory is opened alone when that is all an operation needs (a directory-only data
    folder has no store), and the store on first use."""

    def __init__(self, caller: Caller, data: str, *, store: Store | None = None, local: bool = False) -> None:
        self.caller = caller
        self.data = data
        self.local = local
        self._store = store
        self._directory: Directory | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.data, directory=self._directory)
        return self._store

    @property
    def directory(self) -> Directory:
        if self._store is not None:
            return self._store.directory
        if self._directory is None:
            from mailkeep.directory.setup import open_directory

            self._directory = open_directory(self.data)
        return self._directory

    def close(self) -> None:
        """Close what this context opened (the server's own store is not this context's)."""
        if self.local and self._store is not None:
            self._store.close()
        self._store = None
        if self._directory is not None:
            self._directory.close()
            self._directory = None


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path: str  # with {placeholders} for path parameters
    summary: str
    roles: tuple[Role, ...]
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    tag: str = ""
    path_params: tuple[str, ...] = field(default=())
    exclusive: bool = True  # run one at a time with the other administrative operations

    def url(self, values: Mapping[str, Any]) -> str:
        from urllib.parse import quote

        return re.sub(r"\{(\w+)\}", lambda m: quote(str(values[m.group(1)]), safe=""), self.path)


REGISTRY: dict[str, Operation] = {}


class BadRequest(ValueError):
    """A call's parameters are wrong (unknown, missing or of the wrong type)."""


def operation(
    name: str, method: str, path: str, summary: str, *roles: Role, params: tuple[Param, ...] = (), tag: str = "",
    exclusive: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        in_path = tuple(re.findall(r"\{(\w+)\}", path))
        REGISTRY[name] = Operation(name, method, "/api/v1" + path, summary, tuple(roles), fn, params,
                                   tag or name.split(".")[0], in_path, exclusive)
        return fn

    return register


def _coerce(p: Param, value: Any) -> Any:
    if value is None:
        return None
    if p.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "on", "1", "yes", "false", "off", "0", "no"):
            return value.lower() in ("true", "on", "1", "yes")
        raise BadRequest(f"{p.name} must be true or false, not {value!r}")
    if p.type in ("integer", "number"):
        try:
            return int(value) if p.type == "integer" else float(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{p.name} must be a number, not {value!r}") from None
    if p.type == "array":
        if isinstance(value, str):  # a query parameter: comma-separated
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{p.name} must be a list of strings, not {value!r}")
        return value
    if not isinstance(value, str):
        raise BadRequest(f"{p.name} must be a string, not {value!r}")
    if p.enum and value not in p.enum:
        raise BadRequest(f"{p.name} must be one of {', '.join(p.enum)}, not {value!r}")
    return value


def invoke(ctx: Context, name: str, args: Mapping[str, Any]) -> Any:
    """Check the caller's role, validate the arguments, run the operation."""
    op = REGISTRY[name]
    ctx.caller.require(f"{op.summary} ({op.name})", *op.roles)
    known = {p.name: p for p in op.params} | {n: Param(n, required=True) for n in op.path_params}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise BadRequest(f"{op.name}: unknown parameter(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(known)) or 'none'}")
    values = {}
    for pname, p in known.items():
        v = _coerce(p, args.get(pname))
        if v is None and p.required:
            raise BadRequest(f"{op.name}: parameter {pname} is required")
        values[pname] = v
    return op.fn(ctx, **values)


def load() -> dict[str, Operation]:
    """The registry with every operation module imported."""
    from mailkeep.admin import backup_ops, fti_ops, ops  # noqa: F401 - registers on import

    return REGISTRY
