"""Optional components `meshctl install --addons` runs beside the mesh (Istio's samples/addons, as code)."""

from __future__ import annotations

import difflib

from meshctl import const
from meshctl.errors import UsageError

NONE = "none"


def parse_addons(value: str) -> list[str]:
    """`--addons prometheus` (a comma list) → the addons to keep running; `none` (or "") selects none."""
    names = list(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    if names == [NONE]:
        return []
    valid = ", ".join(const.ADDONS)
    for name in names:
        if name == NONE:
            raise UsageError(f"invalid --addons {value!r}: `none` cannot be combined with addons",
                             f"give `none` alone, or a comma list of: {valid}")
        if name not in const.ADDONS:
            close = difflib.get_close_matches(name, const.ADDONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"unknown addon {name!r} in --addons", f"{hint}valid addons: {valid} (or `none`)")
    return names
