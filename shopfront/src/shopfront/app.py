"""The shopfront application factory.

Middleware order, outermost first, is chosen so every refusal is cheap and
still carries a correlation id and the security headers: request id → drain
(``Connection: close`` once shutting down) → load shedding → HEAD served as
GET → client IP (trusted proxies) → trusted hosts → security headers → error
boundary (a crash or a lost database is a problem+json, the connection kept)
→ CORS → identity (the caller, verified once) → CSRF (cookie-authenticated
requests) → rate limits (keyed on the identity) → body limit → content type
→ idempotency → routes, where each route's declared permission is checked.
"""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from hardened.cache import Cache, CacheConfig, Tier
from hardened.crypto import Crypto, LocalKeyProvider, derive_key
from hardened.db import conflict_error, unavailable_error
from hardened.fastapi import install_problem_handlers
from hardened.http import (
    HSTS,
    SWAGGER_UI_CSP,
    BodyLimitMiddleware,
    ClientIPMiddleware,
    ContentTypeMiddleware,
    ContentTypePolicy,
    CORSMiddleware,
    CORSPolicy,
    CSRFMiddleware,
    Drain,
    DrainMiddleware,
    ErrorBoundaryMiddleware,
    HeadMiddleware,
    IdentityMiddleware,
    LoadShedMiddleware,
    RequestIdMiddleware,
    SecurityHeaders,
    SecurityHeadersMiddleware,
    TrustedHostMiddleware,
    TrustedProxies,
)
from hardened.idempotency import IdempotencyMiddleware, SqlBackend
from hardened.ledger import Ledger
from hardened.logging import configure_logging
from hardened.observability import Health, check
from hardened.ratelimit import RateLimitMiddleware
from hardened.stores import FallbackStore, MemoryStore, RedisStore
from shopfront import __version__, testing_probe
from shopfront.auth import build_auth, previous_secret, revocation_listener, secret_value
from shopfront.crm import Crm
from shopfront.db import Database
from shopfront.exactly_once import GUARDED_ROUTES, http_config
from shopfront.housekeeping import housekeeping
from shopfront.identity import CREDENTIAL_COOKIES, authenticator
from shopfront.kyc import HttpKycVerifier, LocalKycVerifier
from shopfront.limits import build_limits, by_shop
from shopfront.mailer import OutboxMailer
from shopfront.models import DATA_KEYS, IDEMPOTENCY, LEDGER
from shopfront.openapi import install_docs
from shopfront.outbound import build_governors
from shopfront.permissions import public
from shopfront.routes import (
    api_keys,
    catalog,
    coupons,
    customers,
    integrations,
    members,
    orders,
    sims,
    telecom,
    tenants,
    wallet,
)
from shopfront.routes import auth as auth_routes
from shopfront.routes import kyc as kyc_routes
from shopfront.services.imports import IMPORT_MAX_BYTES
from shopfront.settings import Settings
from shopfront.sim_provider import SimProvider
from shopfront.state import AppState, app_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    from hardened.stores import Store

__all__ = ["create_app"]

_log = structlog.get_logger("shopfront.app")
# Foreign exceptions that are not bugs: the database unavailable is a 503, a deadlock or
# serialization failure outside run_transaction a 409 to retry.
TRANSLATE = (unavailable_error, conflict_error)


def _stores(settings: Settings) -> tuple[Store, Store, Any | None]:
    """(general store, token store, redis client for pub/sub); the general one is the primary."""
    if not settings.redis_url:
        memory = MemoryStore()
        return memory, memory, None
    redis = RedisStore.from_url(settings.redis_url)
    if settings.auth_require_redis_for_tokens:
        return redis, redis, redis.client
    return redis, FallbackStore(redis, MemoryStore()), redis.client


def _cache(settings: Settings) -> tuple[Cache, Store]:
    """The read-through cache and its own store (a short timeout: a hung Redis costs little).

    Each tier is fresh for its TTL and servable stale as long again (one refresh
    running, or the source down).
    """
    store: Store = (
        RedisStore.from_url(
            settings.redis_url, timeout=settings.cache_redis_timeout, max_connections=20
        )
        if settings.redis_url
        else MemoryStore()
    )
    tiers = {
        "catalog": Tier(settings.cache_ttl_catalog, settings.cache_ttl_catalog),
        "static": Tier(settings.cache_ttl_static, settings.cache_ttl_static),
        "volatile": Tier(settings.cache_ttl_volatile, settings.cache_ttl_volatile),
    }
    return Cache(store, CacheConfig(tiers=tiers)), store


def _crm_credentials(settings: Settings) -> tuple[str, str] | None:
    if settings.crm_client_id is None or settings.crm_client_secret is None:
        return None
    return settings.crm_client_id, settings.crm_client_secret


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service from settings (read from the environment when not given)."""
    settings = settings or Settings.load()
    configure_logging(
        json=settings.json_logs,
        level="DEBUG" if settings.debug_enabled else "INFO",
        app_loggers=("shopfront",),
        # uvicorn's access lines are INFO: off unless asked for (``serve --access-log``).
        levels=None if settings.access_log else {"uvicorn.access": "WARNING"},
    )
    crypto = Crypto(DATA_KEYS, LocalKeyProvider(settings.keyring()))
    db = Database(settings, crypto)
    store, token_store, redis_client = _stores(settings)
    cache, cache_store = _cache(settings)
    governors = build_governors(store)
    auth = build_auth(settings, token_store, store, redis_client)
    drain = Drain()
    checks = [check("database", db.ping), *governors.health_checks()]
    if settings.redis_url:
        # Without Redis the service still serves (degraded) unless tokens require it.
        critical = settings.auth_require_redis_for_tokens
        checks.append(check("redis", store.ping, critical=critical))
    state = AppState(
        settings=settings,
        db=db,
        store=store,
        health=Health(checks, drain=drain),
        auth=auth,
        mailer=OutboxMailer(),
        limits=build_limits(settings, store),
        ledger=Ledger(LEDGER),
        idempotency=SqlBackend(db.records, IDEMPOTENCY),
        sim=SimProvider(settings.sim_provider_url, governors["sim"]),
        idempotency_secret=derive_key(
            secret_value(settings, "session_secret"), "shopfront idempotency"
        ),
        drain=drain,
        cache=cache,
        cache_store=cache_store,
        crm=Crm(settings.crm_url, cache, governors["crm"], credentials=_crm_credentials(settings)),
        catalog_items=catalog.items_cache(cache),
        governors=governors,
        crypto=crypto,
        idempotency_previous=previous_secret(settings, "session_secret", "shopfront idempotency"),
        kyc_verifier=(
            HttpKycVerifier(settings.kyc_provider_url, governors["kyc"])
            if settings.kyc_provider_url
            else LocalKycVerifier()
        ),
    )

    app = FastAPI(
        title="shopfront",
        version=__version__,
        lifespan=_lifespan(state),
        docs_url=None,  # shopfront.openapi serves /docs from local files
        redoc_url=None,
    )
    app.state.shopfront = state
    install_problem_handlers(app, debug=settings.debug_enabled, translate=TRANSLATE)
    _add_routes(app)
    install_docs(app, state)
    _add_middleware(app, state)
    return app


def _add_routes(app: FastAPI) -> None:
    for router in (
        auth_routes.router,
        auth_routes.sockets,
        tenants.router,
        members.router,
        members.invitations,
        api_keys.router,
        customers.router,
        catalog.router,
        coupons.router,
        orders.router,
        orders.shipments,
        wallet.router,
        sims.router,
        telecom.router,
        kyc_routes.router,
        integrations.router,
    ):
        app.include_router(router)

    @app.get("/health/live", tags=["health"], dependencies=[public()])
    async def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"], dependencies=[public()])
    async def ready(state: Annotated[AppState, Depends(app_state)]) -> JSONResponse:
        """Every dependency answers (503 when a critical one does not)."""
        result = await state.health.ready()
        return JSONResponse(result.as_dict(), status_code=result.http_status)

    @app.get("/metrics", tags=["health"], include_in_schema=False, dependencies=[public()])
    async def metrics() -> Response:
        """Prometheus exposition."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _lifespan(state: AppState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def run(_app: FastAPI) -> AsyncIterator[None]:
        # Everything alive after start-up lives as long as the process: freezing it
        # keeps full collections small, so a GC pause never stalls the loop for long.
        try:
            await state.db.reserve()
        except Exception:  # noqa: BLE001 - readiness reports the database; serving starts anyway
            _log.warning("db.reserve_failed", exc_info=True)
        gc.collect()
        gc.freeze()
        async with revocation_listener(state.auth), housekeeping(state):
            try:
                yield
            finally:
                await state.aclose()

    return run


def _add_middleware(app: FastAPI, state: AppState) -> None:
    settings, csrf, limits = state.settings, state.auth.csrf, state.limits
    proxies = TrustedProxies.from_strings(settings.trusted_proxies)
    debug = settings.debug_enabled
    # add_middleware wraps: the last one added is the outermost. Idempotency is the
    # innermost: it sees only requests every guard admitted, with their bodies capped.
    app.add_middleware(
        IdempotencyMiddleware,
        backend=state.idempotency,
        secret=state.idempotency_secret,
        # A retry stored before a SESSION_SECRET rotation still replays during the overlap.
        previous_secrets=state.idempotency_previous,
        rules=GUARDED_ROUTES,
        config=http_config(settings),
    )
    csv_only = ContentTypePolicy(path_overrides={"/orders/import": {"text/csv"}})
    app.add_middleware(ContentTypeMiddleware, policy=csv_only, debug=debug)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_overrides={"/orders/import": IMPORT_MAX_BYTES},
        debug=debug,
    )
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limits.limiter,
        rules=limits.rules(),
        default=((limits.tenant, by_shop),),
        debug=debug,
    )
    app.add_middleware(CSRFMiddleware, policy=csrf, debug=debug)
    app.add_middleware(
        IdentityMiddleware, authenticate=authenticator(state), cookies=CREDENTIAL_COOKIES
    )
    cors = CORSPolicy(
        allow_origins=settings.cors_origins, allow_origin_patterns=settings.cors_origin_patterns
    )
    app.add_middleware(CORSMiddleware, policy=cors, debug=debug)
    headers = SecurityHeaders(
        hsts=HSTS() if settings.hsts else None, csp_overrides={"/docs": SWAGGER_UI_CSP}
    )
    app.add_middleware(ErrorBoundaryMiddleware, translate=TRANSLATE, debug=debug)
    app.add_middleware(SecurityHeadersMiddleware, config=headers)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, debug=debug)
    app.add_middleware(ClientIPMiddleware, trusted_proxies=proxies)
    app.add_middleware(HeadMiddleware)
    if settings.max_in_flight_requests:
        app.add_middleware(
            LoadShedMiddleware, max_in_flight=settings.max_in_flight_requests, debug=debug
        )
    app.add_middleware(DrainMiddleware, drain=state.drain)
    app.add_middleware(RequestIdMiddleware, trusted_proxies=proxies)
    testing_probe.install(app, settings)  # outermost; adds nothing unless a test asks
