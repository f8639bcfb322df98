"""The per-machine on-disk catalog of backup media, for fast browsing.

The media are the truth: every catalog can be rebuilt by scanning them (``backup catalog
rebuild``), even on another machine or with the on-disk catalog deleted. An on-disk catalog
is used only while it matches the media (same GUID, same size and modification time);
otherwise it is rebuilt on the spot.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

from mailkeep.backup.media import MediaHeader, MediaReader, SetInfo
from mailkeep.backup.report import state_dir


def catalog_dir() -> str:
    d = os.path.join(state_dir(), "catalogs")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def _path(guid: str) -> str:
    return os.path.join(catalog_dir(), f"{guid}.json")


def _stamp(media: str) -> list[float]:
    st = os.stat(media)
    return [float(st.st_size), st.st_mtime]


def rebuild(media: str) -> tuple[MediaHeader, list[SetInfo]]:
    """Scan the media and (re)write its on-disk catalog."""
    r = MediaReader(media)
    r.check_access()
    sets = r.sets()
    data: dict[str, Any] = {"media": asdict(r.header), "path": os.path.abspath(media), "stamp": _stamp(media),
                            "sets": [s.to_json() for s in sets]}
    p = _path(r.header.guid)
    tmp = p + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, p)
    return r.header, sets


def load(media: str) -> tuple[MediaHeader, list[SetInfo], bool]:
    """The catalog of ``media``: from disk when current, else rebuilt. The flag says whether
    it was rebuilt."""
    stamp = _stamp(media)
    path = os.path.abspath(media)
    for name in os.listdir(catalog_dir()):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(catalog_dir(), name), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if data.get("path") == path and data.get("stamp") == stamp:
            return MediaHeader(**data["media"]), [SetInfo.from_json(s) for s in data["sets"]], False
    header, sets = rebuild(media)
    return header, sets, True


def delete(media: str) -> bool:
    """Forget the on-disk catalog of ``media`` (the media are not touched)."""
    path = os.path.abspath(media)
    gone = False
    for name in os.listdir(catalog_dir()):
        p = os.path.join(catalog_dir(), name)
        try:
            with open(p, encoding="utf-8") as f:
                same = json.load(f).get("path") == path
        except (OSError, ValueError):
            continue
        if same:
            os.unlink(p)
            gone = True
    return gone
