"""Patient ids from Kermany file names, so that no patient is in two splits.

Kermany names carry the patient: ``person1000_bacteria_2931`` and ``person1_virus_6``
(pneumonia), ``IM-0001-0001`` and ``NORMAL2-IM-0246-0001-0001`` (normal). ``IM-`` and
``NORMAL2-IM-`` numbers are separate series, so the prefix is kept in the id.
"""
from __future__ import annotations

import re
from pathlib import PurePath

_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)-", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-", re.IGNORECASE),
)


def patient_id(path: str | PurePath) -> str | None:
    """The patient id in a Kermany file name, or None when the name carries none."""
    stem = PurePath(str(path)).stem
    for pattern in _PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return None


def patient_ids(paths, fallback: str = "file") -> list[str]:
    """Ids for many paths; a name without an id becomes its own patient (``file:<stem>``)."""
    out = []
    for p in paths:
        pid = patient_id(p)
        out.append(pid if pid is not None else f"{fallback}:{PurePath(str(p)).stem}")
    return out
