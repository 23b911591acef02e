"""Request guards shared by the server and the dashboard, stdlib only.

Both import it; it imports neither (nor any web framework), so the dashboard can apply the very
same rules as the server without depending on it (docs/ARCHITECTURE.md, import rules).
"""
