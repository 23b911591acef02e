"""Component ids of the compare page's group, band, time-to-target and "why" controls.

Kept here, not in ``dashboard/ids.py`` (shared by every page), and in one module because several
sections read the same stores (the groups feed the scalars, time to target, why, matched and
per-layer sections).
"""

from __future__ import annotations

CMP_GROUP_BY = "cmp-group-by"
CMP_GROUPS = "cmp-groups"
CMP_GROUPS_SUMMARY = "cmp-groups-summary"
CMP_BAND = "cmp-band"
CMP_MEMBERS = "cmp-members"
CMP_TTT_GROUPS = "cmp-ttt-groups"
CMP_WHY = "cmp-why"
CMP_WHY_A = "cmp-why-a"
CMP_WHY_BASELINE = "cmp-why-baseline"
CMP_WHY_MATCH = "cmp-why-match"
CMP_WHY_AT = "cmp-why-at"
