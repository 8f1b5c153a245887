"""Pure-ASGI HTTP guards: every refusal is a problem+json response, cheap and early."""

from hardened.http._body import (
    DEFAULT_MAX_BODY_BYTES,
    BodyLimitMiddleware,
    BodyLimits,
    ContentTypeMiddleware,
    ContentTypePolicy,
)
from hardened.http._boundary import (
    ErrorBoundaryMiddleware,
    Translator,
    log_exception,
    translate_exception,
)
from hardened.http._client_ip import ClientIPMiddleware
from hardened.http._cors import CORSMiddleware, CORSPolicy
from hardened.http._csrf import (
    CSRFMiddleware,
    CSRFPolicy,
    issue_csrf_token,
    set_csrf_cookie_header,
    verify_csrf_token,
)
from hardened.http._drain import Drain, DrainMiddleware
from hardened.http._errors import Overloaded
from hardened.http._head import HeadMiddleware
from hardened.http._headers import (
    API_CSP,
    HSTS,
    SWAGGER_UI_CSP,
    SecurityHeaders,
    SecurityHeadersMiddleware,
    swagger_ui_csp,
)
from hardened.http._hosts import TrustedHostMiddleware, TrustedHosts, host_name
from hardened.http._identity import (
    ANONYMOUS,
    Authenticate,
    Credentials,
    Identity,
    IdentityMiddleware,
    identity_of,
)
from hardened.http._paths import PathMap, PathPattern
from hardened.http._problem import send_problem
from hardened.http._proxy import TrustedProxies
from hardened.http._request_id import RequestIdMiddleware
from hardened.http._shed import DEFAULT_SHED_EXEMPT, LoadShedMiddleware

__all__ = [
    "ANONYMOUS",
    "API_CSP",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_SHED_EXEMPT",
    "HSTS",
    "SWAGGER_UI_CSP",
    "Authenticate",
    "BodyLimitMiddleware",
    "BodyLimits",
    "CORSMiddleware",
    "CORSPolicy",
    "CSRFMiddleware",
    "CSRFPolicy",
    "ClientIPMiddleware",
    "ContentTypeMiddleware",
    "ContentTypePolicy",
    "Credentials",
    "Drain",
    "DrainMiddleware",
    "ErrorBoundaryMiddleware",
    "HeadMiddleware",
    "Identity",
    "IdentityMiddleware",
    "LoadShedMiddleware",
    "Overloaded",
    "PathMap",
    "PathPattern",
    "RequestIdMiddleware",
    "SecurityHeaders",
    "SecurityHeadersMiddleware",
    "Translator",
    "TrustedHostMiddleware",
    "TrustedHosts",
    "TrustedProxies",
    "host_name",
    "identity_of",
    "issue_csrf_token",
    "log_exception",
    "send_problem",
    "set_csrf_cookie_header",
    "swagger_ui_csp",
    "translate_exception",
    "verify_csrf_token",
]
