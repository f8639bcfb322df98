"""The attributes Mailkeep's directory knows, with their syntax, for both backends.

Invariant: a value handed to or returned by a backend has the Python type its syntax says:
``str`` (strings and DNs), ``int`` (integers), ``bytes`` (GUIDs, SIDs, hashes). Attribute
names are matched case-insensitively and returned in the spelling below. The OpenLDAP schema
file (``schema/mailkeep.ldif``) declares the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STRING, INTEGER, DN, BINARY, BOOLEAN = "string", "integer", "dn", "binary", "boolean"


@dataclass(frozen=True)
class AttributeType:
    name: str
    syntax: str = STRING
    single: bool = True


_ATTRS = [
    # identity and naming
    AttributeType("objectClass", single=False),
    AttributeType("objectCategory"),
    AttributeType("cn"),
    AttributeType("name"),
    AttributeType("distinguishedName", DN),
    AttributeType("objectGUID", BINARY),
    AttributeType("objectSid", BINARY),
    AttributeType("sAMAccountName"),
    AttributeType("userPrincipalName"),
    AttributeType("displayName"),
    AttributeType("givenName"),
    AttributeType("sn"),
    AttributeType("description"),
    AttributeType("member", DN, single=False),
    AttributeType("userAccountControl", INTEGER),
    AttributeType("passwordHash"),
    AttributeType("whenCreated"),
    AttributeType("whenChanged"),
    AttributeType("isDeleted", BOOLEAN),
    AttributeType("tombstoneLifetime", INTEGER),
    AttributeType("dc"),
    AttributeType("ou"),
    # Exchange recipient attributes
    AttributeType("mail"),
    AttributeType("mailNickname"),
    AttributeType("proxyAddresses", single=False),
    AttributeType("legacyExchangeDN"),
    AttributeType("homeMDB", DN),
    AttributeType("homeMTA", DN),
    AttributeType("msExchHomeServerName"),
    AttributeType("msExchMailboxGUID", BINARY),
    AttributeType("msExchMasterAccountSid", BINARY),
    AttributeType("msExchUserAccountControl", INTEGER),
    AttributeType("msExchMailboxSecurityDescriptor", single=False),
    AttributeType("msExchPoliciesIncluded", single=False),
    AttributeType("showInAddressBook", DN, single=False),
    # configuration objects (organization, administrative groups, servers, stores)
    AttributeType("msExchESEParamLogFilePath"),
    AttributeType("msExchESEParamSystemPath"),
    AttributeType("msExchESEParamBaseName"),
    AttributeType("msExchESEParamCircularLog", INTEGER),
    AttributeType("msExchEDBFile"),
    AttributeType("msExchSLVFile"),
    AttributeType("msExchEDBOffline", BOOLEAN),
    AttributeType("msExchPatchMDB", BOOLEAN),
    AttributeType("msExchRestore", BOOLEAN),
    AttributeType("msExchMailboxRetentionPeriod", INTEGER),
    AttributeType("msExchOwningServer", DN),
    AttributeType("msExchPolicyList", single=False),
    AttributeType("gatewayProxy", single=False),
    AttributeType("networkAddress", single=False),
]

ATTRIBUTES: dict[str, AttributeType] = {a.name.lower(): a for a in _ATTRS}


def attribute(name: str) -> AttributeType:
    """The attribute type (unknown names are multi-valued strings, as LDAP would keep them)."""
    return ATTRIBUTES.get(name.lower()) or AttributeType(name, STRING, single=False)


def canonical_name(name: str) -> str:
    a = ATTRIBUTES.get(name.lower())
    return a.name if a else name


def to_python(name: str, value: Any) -> str | int | bytes:
    """Coerce a value arriving from LDIF, LDAP or a caller to its syntax's type."""
    syntax = attribute(name).syntax
    if syntax == INTEGER:
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, bool):
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{canonical_name(name)} takes an integer, not {value!r}") from e
    if syntax == BINARY:
        if isinstance(value, str):
            raise ValueError(f"{canonical_name(name)} takes binary data (base64 in LDIF), not text")
        return bytes(value)
    if syntax == BOOLEAN:
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.upper() not in ("TRUE", "FALSE"):
            raise ValueError(f"{canonical_name(name)} takes TRUE or FALSE, not {text!r}")
        return text.upper()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
