"""KFAC/FOP rows for the shared optimizer contract suite (owned by the KFAC/FOP work)."""

KFAC_CASES: list = []
