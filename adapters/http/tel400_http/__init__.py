"""tel400's HTTP microservice: the route API, switch formats, the admin API.

``tel400-http`` (:mod:`tel400_http.server`) runs it; :func:`create_app`
builds the ASGI application for tests and for embedding in another server.
"""

from .app import Service, create_app

__all__ = ["Service", "create_app"]
