"""Roles: the guide's "Permissions Required" table, kept as directory groups.

The guide names four kinds of rights: Exchange backups need *domain backup operator* rights,
Exchange restores *full Exchange administrator* rights, Windows (here: configuration set)
restores *local administrator* rights; everyone else reaches only what they own. Mailkeep keeps
each role as a security group in the domain's Users container, so the same directory (embedded
or OpenLDAP) that authenticates an account also says what it may do, and an administrator
grants a role by adding the account to the group (`mailkeep role grant`).

Invariants:
- A role is held only through membership (by DN) of its group; a disabled account holds none.
- Every authenticated, enabled account holds ``user``: its own mailbox, nothing else.
- Checks name the role a refused call needs and the roles the caller has, so an
  administrator knows which group to use.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailkeep.directory import dn as dnmod
from mailkeep.directory.backend import DirectoryError, Entry
from mailkeep.directory.directory import Directory


class Role(enum.Enum):
    USER = "user"
    BACKUP_OPERATOR = "backup-operator"
    FULL_ADMINISTRATOR = "full-administrator"
    LOCAL_ADMINISTRATOR = "local-administrator"

    @property
    def title(self) -> str:
        return TITLES[self]


TITLES = {
    Role.USER: "user (own mailbox only)",
    Role.BACKUP_OPERATOR: "backup operator",
    Role.FULL_ADMINISTRATOR: "full Exchange administrator",
    Role.LOCAL_ADMINISTRATOR: "local administrator",
}

#: The group that grants each role (``user`` needs none).
GROUPS = {
    Role.BACKUP_OPERATOR: "Backup Operators",
    Role.FULL_ADMINISTRATOR: "Exchange Full Administrators",
    Role.LOCAL_ADMINISTRATOR: "Administrators",
}


class AccessDenied(Exception):
    """A caller lacks the role a call needs; ``str()`` says which role and which group grants it."""

    def __init__(self, what: str, needed: Iterable[Role], caller: Caller) -> None:
        self.needed = tuple(needed)
        self.caller = caller
        names = " or ".join(f"{r.title} (group {GROUPS[r]!r})" if r in GROUPS else r.title for r in self.needed)
        has = ", ".join(r.title for r in sorted(caller.roles, key=lambda r: r.value)) or "none"
        super().__init__(f"{what} needs the role {names}; {caller.name} has: {has}")


@dataclass(frozen=True)
class Caller:
    """Who is calling and what they may do. ``dn`` is empty for the server's own service account."""

    name: str
    dn: str
    roles: frozenset[Role] = field(default_factory=frozenset)

    def require(self, what: str, *any_of: Role) -> None:
        if not any_of or self.roles & set(any_of):
            return
        raise AccessDenied(what, any_of, self)

    def has(self, role: Role) -> bool:
        return role in self.roles


#: The server's own account: whoever can read the data folder's service token owns the server
#: already (they could open the files themselves), so it holds every role.
SERVICE = Caller("the local service account", "", frozenset(Role))


def group_dn(d: Directory, role: Role) -> str:
    return dnmod.child(d.users_dn, "CN", GROUPS[role])


def ensure_groups(d: Directory) -> None:
    """Create the role groups if missing (setup, and servers set up before roles existed)."""
    for role in GROUPS:
        if d.get(group_dn(d, role)) is None:
            d.add_group(GROUPS[role])


def roles_of(d: Directory, user: Entry) -> frozenset[Role]:
    if d.is_disabled(user):
        return frozenset()
    me = dnmod.normalize(user.dn)
    held = {Role.USER}
    for role in GROUPS:
        g = d.get(group_dn(d, role))
        if g is not None and any(dnmod.normalize(str(m)) == me for m in g.get("member")):
            held.add(role)
    return frozenset(held)


def caller_for(d: Directory, user: Entry) -> Caller:
    return Caller(str(user.text("sAMAccountName")), user.dn, roles_of(d, user))


def parse_role(text: str) -> Role:
    t = text.strip().lower().replace("_", "-").replace(" ", "-")
    for r in Role:
        if t in (r.value, r.name.lower().replace("_", "-")):
            return r
    choices = ", ".join(r.value for r in GROUPS)
    raise ValueError(f"unknown role {text!r}: choose one of {choices}")


def grant(d: Directory, name: str, role: Role) -> Entry:
    return _change(d, name, role, add=True)


def revoke(d: Directory, name: str, role: Role) -> Entry:
    return _change(d, name, role, add=False)


def _change(d: Directory, name: str, role: Role, *, add: bool) -> Entry:
    if role not in GROUPS:
        raise ValueError(f"every account holds the role {role.value}; it cannot be granted or revoked")
    user = d.require_user(name)
    ensure_groups(d)
    gdn = group_dn(d, role)
    g = d.require(gdn)
    me = dnmod.normalize(user.dn)
    members = [str(m) for m in g.get("member")]
    kept = [m for m in members if dnmod.normalize(m) != me]
    new = kept + [user.dn] if add else kept
    if new != members:
        d.replace(gdn, member=new)
    return user


def members(d: Directory) -> dict[Role, list[str]]:
    """Account names per granted role (DNs of deleted accounts are shown as DNs)."""
    out: dict[Role, list[str]] = {}
    for role in GROUPS:
        g = d.get(group_dn(d, role))
        names = []
        for m in g.get("member") if g is not None else []:
            try:
                e = d.get(str(m))
            except DirectoryError:
                e = None
            names.append(str(e.text("sAMAccountName")) if e is not None else str(m))
        out[role] = sorted(names, key=str.lower)
    return out
