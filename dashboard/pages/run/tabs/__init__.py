"""The run page's tabs, in the order of the tab strip."""

from __future__ import annotations

from . import alerts, config, gdiff, infobatch, kfac, layers, neurons, scalars, spectra
from .base import Tab

__all__ = ["BY_ID", "MODULES", "TAB_IDS", "TABS", "Tab"]

MODULES = (scalars, spectra, neurons, gdiff, kfac, layers, infobatch, alerts, config)
TABS: tuple[Tab, ...] = tuple(m.TAB for m in MODULES)
TAB_IDS: tuple[str, ...] = tuple(t.id for t in TABS)
BY_ID = {t.id: t for t in TABS}
