"""Pure-ASGI HTTP guards: every refusal is a problem+json response, cheap and early."""

from hardened.http._body import (
    DEFAULT_MAX_BODY_BYTES,
    BodyLimitMiddleware,
    BodyLimits,
    ContentTypeMiddleware,
    ContentTypePolicy,
)
from hardened.http._boundary import ErrorBoundaryMiddleware, Translator, translate_exception
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
from hardened.http._head import HeadMiddleware
from hardened.http._headers import (
    API_CSP,
    HSTS,
    SWAGGER_UI_CSP,
    SecurityHeaders,
    SecurityHeadersMiddleware,
)
from hardened.http._hosts import TrustedHostMiddleware, TrustedHosts
from hardened.http._identity import (
    ANONYMOUS,
    Authenticate,
    Credentials,
    Identity,
    IdentityMiddleware,
    identity_of,
)
from hardened.http._paths import PathPattern
from hardened.http._problem import send_problem
from hardened.http._proxy import TrustedProxies
from hardened.http._request_id import RequestIdMiddleware
from hardened.http._shed import DEFAULT_SHED_EXEMPT, LoadShedMiddleware, Overloaded

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
    "PathPattern",
    "RequestIdMiddleware",
    "SecurityHeaders",
    "SecurityHeadersMiddleware",
    "Translator",
    "TrustedHostMiddleware",
    "TrustedHosts",
    "TrustedProxies",
    "identity_of",
    "issue_csrf_token",
    "send_problem",
    "set_csrf_cookie_header",
    "translate_exception",
    "verify_csrf_token",
]
