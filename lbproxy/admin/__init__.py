# -*- test-case-name: lbproxy.test.test_admin -*-
"""
The admin API: read and change the running load balancer over HTTP (JSON).

L{api.AdminAPI} is the transport-independent core (method, path and body
in; an L{AdminResponse} out), so a worker supervisor can drive it over a
pipe as well as the HTTP listener of L{http.adminSite} can; L{auth} holds
the bearer token check and the checks of the C{--admin} settings; L{views}
the JSON shapes of pools and backends.
"""

from lbproxy.admin.api import MAX_BODY, AdminAPI, AdminHandler, ConfigHooks, ConfigRejected
from lbproxy.admin.auth import AdminConfigError, checkAdminEndpoint, readTokenFile
from lbproxy.admin.http import adminSite
from lbproxy.admin.response import AdminResponse

__all__ = [
    "MAX_BODY",
    "AdminAPI",
    "AdminConfigError",
    "AdminHandler",
    "AdminResponse",
    "ConfigHooks",
    "ConfigRejected",
    "adminSite",
    "checkAdminEndpoint",
    "readTokenFile",
]
