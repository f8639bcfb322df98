"""The public folder store: one folder hierarchy per public folder database, and posts.

A public folder database holds a single mailbox row of kind ``public`` keyed by the
database's directory GUID; its folder tree is the hierarchy and its messages are the posts,
so public folders share the mailbox access API (and its invariants) instead of copying it.
Replication of the hierarchy and content between servers is not here (a later issue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

from mailkeep.store import content
from mailkeep.store.errors import MAPI_E_NOT_FOUND, StoreError
from mailkeep.store.mailbox import Mailbox

if TYPE_CHECKING:
    from mailkeep.store.store import Store


class PublicFolders(Mailbox):
    def post(self, path: str, source: BinaryIO | content.Readable) -> int:
        """A post in a public folder; its UID there."""
        return self.append(path, source)


def open_public(store: Store, name: str | None = None) -> PublicFolders:
    """The public folder store ``name`` (default: the server's first one), mounted."""
    dbs = [d for d in store.server.databases() if d.public and (name is None or d.name.lower() == name.lower()
                                                               or d.path_name.lower() == name.lower())]
    if not dbs:
        raise StoreError(MAPI_E_NOT_FOUND, f"no public folder store {name or ''} on server {store.server.name}".replace(
            "  ", " "))
    info = dbs[0]
    store.handle(info)
    return PublicFolders(store, info, str(info.guid))
