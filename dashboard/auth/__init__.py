"""Sign-in for the dashboard: who is using it, and the checks every request and write goes through.

The dashboard holds no API token of its own. A person signs in with their API token (``login``);
the token stays in a server-side store (``sessions``) and the signed Flask session cookie carries
only a session id and a CSRF value. ``guard`` enforces it in one ``before_request`` and offers
``require_write()`` for mutating callbacks.
"""
