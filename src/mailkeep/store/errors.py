"""The store's one exception: a MAPI/Exchange error code, its name, and what to do.

Invariant: codes are the numbers an Exchange administrator would look up (``0x50c
ecMailboxInTransit`` is the 1292 the guide's event 1022 prints); messages say what is
wrong and what to do next. ``temporary`` tells a mail transfer agent whether to retry
(sysexits 75) or bounce.
"""

from __future__ import annotations

CODES: dict[int, str] = {
    0x3EB: "ecUnknownUser",
    0x3F2: "ecLoginFailure",
    0x3F4: "ecNotFound",
    0x478: "ecWrongServer",
    0x50C: "ecMailboxInTransit",
    0x4B9: "ecDuplicateName",
    0x4DF: "ecTooBig",
    0x80040111: "MAPI_E_LOGON_FAILED",
    0x8004011D: "MAPI_E_FAILONEPROVIDER",
    0x80040102: "MAPI_E_NO_SUPPORT",
    0x80070057: "MAPI_E_INVALID_PARAMETER",
    0x8004010F: "MAPI_E_NOT_FOUND",
    0x80040604: "MAPI_E_COLLISION",
    0x80004005: "MAPI_E_CALL_FAILED",
}

ecUnknownUser = 0x3EB
ecLoginFailure = 0x3F2
ecNotFound = 0x3F4
ecWrongServer = 0x478  # the mailbox is homed on another server: deliver there (relay: a later issue)
ecMailboxInTransit = 0x50C
ecDuplicateName = 0x4B9
ecTooBig = 0x4DF
MAPI_E_FAILONEPROVIDER = 0x8004011D  # the database is dismounted
MAPI_E_NO_SUPPORT = 0x80040102
MAPI_E_INVALID_PARAMETER = 0x80070057
MAPI_E_NOT_FOUND = 0x8004010F
MAPI_E_COLLISION = 0x80040604
MAPI_E_CALL_FAILED = 0x80004005

# Failures a sender should retry: the mailbox may be reachable later.
TEMPORARY = {MAPI_E_FAILONEPROVIDER, ecMailboxInTransit, MAPI_E_CALL_FAILED, ecLoginFailure, ecWrongServer}


class StoreError(Exception):
    def __init__(self, code: int, message: str, *, new_home: str | None = None) -> None:
        self.code = code
        self.name = CODES.get(code, "ecUnknown")
        self.new_home = new_home
        super().__init__(f"{message} ({self.name} {code:#x})")
        self.message = message

    @property
    def temporary(self) -> bool:
        return self.code in TEMPORARY
