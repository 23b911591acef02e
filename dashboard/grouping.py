"""Group-by values shared by the runs page and the compare page.

Kept out of ``dashboard.pages.compare``: importing that package registers the compare page's
callbacks, which only the app's page loader may do (``dashboard.app._load_pages``).
"""

from __future__ import annotations

__all__ = ["ALL_BUT_SEED", "NO_GROUPING"]

ALL_BUT_SEED = "~all-but-seed"  # the dropdown value for the default grouping (every config key but seed)
NO_GROUPING = "none"  # in the URL: group_by=none shows each run on its own
