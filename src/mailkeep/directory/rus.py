"""The Recipient Update Service: completes mailbox-enabled users.

The guide: "If an administrator sets the mailNickname attribute along with any one or more of
the homeMDB, homeMTA, or msExchHomeServer attributes, the Recipient Update Service will
configure all other attributes required to fully mailbox-enable the account", assigning the
mailbox to "the first database configured on the server" when homeMDB is not given.

Invariants: completion only adds what is missing (it never overwrites a value an
administrator set; msExchUserAccountControl alone follows the account's
enabled state); it never sets msExchMailboxGUID (the store allocates the mailbox at first
logon or delivery, the second stage of creation); it is idempotent — running it on a
complete user changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailkeep.directory import dn as dnmod
from mailkeep.directory.backend import Change, Entry, Value

if TYPE_CHECKING:
    from mailkeep.directory.directory import Directory

HOME_ATTRS = ("homeMDB", "homeMTA", "msExchHomeServerName")
DISABLED_LEGACY_DN = "ADCDisabledMail"  # the legacyExchangeDN Delete Mailbox leaves


def is_mailbox_enabled(user: Entry) -> bool:
    return user.has("mailNickname") and any(user.has(a) for a in HOME_ATTRS)


def _server_dn(d: Directory, user: Entry) -> str | None:
    mdb = user.text("homeMDB")
    if mdb:
        return d.server_of_database(mdb)
    mta = user.text("homeMTA")
    if mta:
        return dnmod.parent(mta)
    legacy = user.text("msExchHomeServerName")
    if legacy:
        server = d.server_by_legacy_dn(legacy)
        return server.dn if server else None
    return None


def completion(d: Directory, user: Entry) -> list[Change]:
    """The changes that complete ``user`` (empty when nothing is missing or it is not
    mailbox-enabled)."""
    if not is_mailbox_enabled(user):
        return []
    changes: list[Change] = []

    def need(attr: str, value: Value | None) -> None:
        if value is not None and not user.has(attr):
            changes.append(Change("replace", attr, (value,)))

    nick = str(user.text("mailNickname"))
    if str(user.text("legacyExchangeDN") or "").lower() == DISABLED_LEGACY_DN.lower():
        # left by Delete Mailbox: the mailbox-enabled user gets a real legacyExchangeDN again
        user = Entry(user.dn, {k: v for k, v in user.attrs.items() if k.lower() != "legacyexchangedn"})

    server_dn = _server_dn(d, user)
    server = d.get(server_dn) if server_dn else None
    if server is not None:
        if not user.has("homeMDB"):
            dbs = d.databases_of_server(server.dn)
            if dbs:
                need("homeMDB", dbs[0].dn)
        need("homeMTA", f"CN=Microsoft MTA,{server.dn}")
        need("msExchHomeServerName", server.text("legacyExchangeDN"))
    org, ag = _org_and_group(server.dn if server else None)
    need("legacyExchangeDN", f"/o={org}/ou={ag}/cn=Recipients/cn={nick}" if org else None)
    addresses = d.recipient_policy_addresses(org, nick)
    primary = next((a[5:] for a in addresses if a.startswith("SMTP:")), f"{nick}@{d.domain}")
    need("mail", primary)
    if not user.has("proxyAddresses"):
        mail = user.text("mail") or primary
        rest = [a for a in addresses if not a.startswith("SMTP:") and a[5:].lower() != mail.lower()]
        changes.append(Change("replace", "proxyAddresses", (f"SMTP:{mail}", *rest)))
    state = 2 if d.is_disabled(user) else 0  # msExchUserAccountControl follows the account's state
    if user.first("msExchUserAccountControl") != state:
        changes.append(Change("replace", "msExchUserAccountControl", (state,)))
    return changes


def _org_and_group(server_dn: str | None) -> tuple[str | None, str | None]:
    """(organization, administrative group) from a server DN of the guide's form."""
    if not server_dn:
        return None, None
    parts = dnmod.split(server_dn)
    # CN=Server,CN=Servers,CN=AG,CN=Administrative Groups,CN=Org,CN=Microsoft Exchange,...
    if len(parts) < 6:
        return None, None
    return parts[4][1], parts[2][1]


def run(d: Directory) -> list[str]:
    """On demand: complete every mailbox-enabled user; returns the DNs changed."""
    changed = []
    for user in list(d.users()):
        changes = completion(d, user)
        if changes:
            d.backend.modify(user.dn, changes)
            changed.append(user.dn)
    return changed
