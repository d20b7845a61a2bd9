"""Faust's ``faust.web`` names: ``View``, ``Request``, ``Response``, ``Web``.

Views are served by Quart-Trio (``docs/web.md``); ``Request`` is the
Faust-style view of Quart's request (``request.query``, ``request.match_info``).
"""

from quart import Response

from .._web.routes import FaustRequest as Request
from .._web.routes import View, Web

__all__ = ["Request", "Response", "View", "Web"]
