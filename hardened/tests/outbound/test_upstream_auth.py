"""Upstream tokens against a real upstream: cached, renewed early, one re-auth per expiry."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest
from fake_upstream import FakeUpstream, running_upstream
from structlog.testing import capture_logs

from hardened.outbound import Token, TokenConfig, UpstreamAuth, UpstreamAuthFailed
from hardened.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio

SECRET = "client-secret-0f3a9"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A fresh fake upstream on a free local port."""
    async with running_upstream() as fake:
        yield fake


@pytest.fixture
async def token_client() -> AsyncIterator[httpx.AsyncClient]:
    """The client the token fetch uses (apart from the authenticated one, as in production)."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def fetcher(fake: FakeUpstream, client: httpx.AsyncClient) -> Callable[[], Awaitable[Token]]:
    """A client-credentials fetch against the fake's token endpoint."""

    async def fetch() -> Token:
        response = await client.post(
            f"{fake.url}/token", data={"client_id": "svc", "client_secret": SECRET}
        )
        response.raise_for_status()
        body = response.json()
        return Token(body["access_token"], body.get("expires_in"))

    return fetch


def api(fake: FakeUpstream, auth: UpstreamAuth) -> httpx.AsyncClient:
    """The authenticated client of the fake's data endpoint."""
    return httpx.AsyncClient(base_url=fake.url, auth=auth, timeout=30.0)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded, generously) for the fake to reach a state."""
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


async def test_first_call_fetches_once(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """The first call fetches one token and sends it as a bearer token."""
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        response = await client.get("/data")
    assert response.status_code == 200
    assert (auth.fetches, auth.reauths, upstream.issued, upstream.rejected) == (1, 0, 1, 0)


async def test_cached_token_serves_many_calls(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """Sequential and concurrent calls share the one cached token: a single fetch."""
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        statuses = [(await client.get("/data")).status_code for _ in range(20)]
        answers = await asyncio.gather(*(client.get("/data") for _ in range(20)))
    assert statuses + [r.status_code for r in answers] == [200] * 40
    assert (auth.fetches, upstream.issued, upstream.data_requests) == (1, 1, 40)


async def test_first_concurrent_calls_share_one_fetch(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """Calls arriving while the first token is being fetched wait for that fetch."""
    upstream.token_gate = gate = asyncio.Event()
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        calls = [asyncio.create_task(client.get("/data")) for _ in range(10)]
        await until(lambda: upstream.token_requests == 1)
        gate.set()
        answers = await asyncio.gather(*calls)
    assert [r.status_code for r in answers] == [200] * 10
    assert (auth.fetches, upstream.token_requests, upstream.issued) == (1, 1, 1)


async def test_token_in_refresh_buffer_is_fetched_again(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """A token is used until refresh_buffer before its end, then the next call fetches anew."""
    clock = ManualClock(0.0)
    config = TokenConfig(ttl=720.0, refresh_buffer=60.0)
    upstream.expires_in = None  # the configured ttl applies
    auth = UpstreamAuth("crm", fetcher(upstream, token_client), config, clock=clock)
    with capture_logs() as logs:
        async with api(upstream, auth) as client:
            assert (await client.get("/data")).status_code == 200
            clock.now = 659.0
            assert (await client.get("/data")).status_code == 200
            assert auth.fetches == 1
            clock.now = 661.0
            assert (await client.get("/data")).status_code == 200
    assert (auth.fetches, auth.reauths, upstream.issued, upstream.rejected) == (2, 0, 2, 0)
    reasons = [e["reason"] for e in logs if e["event"] == "outbound.token_fetched"]
    assert reasons == ["initial", "expiring"]


async def test_issued_lifetime_wins_and_short_tokens_renew_halfway(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """The issued expires_in replaces the ttl; one shorter than the buffer renews at half life."""
    clock = ManualClock(0.0)
    upstream.expires_in = 40.0  # shorter than the 60 s buffer
    auth = UpstreamAuth("crm", fetcher(upstream, token_client), TokenConfig(), clock=clock)
    async with api(upstream, auth) as client:
        await client.get("/data")
        clock.now = 19.0
        await client.get("/data")
        assert auth.fetches == 1
        clock.now = 21.0
        await client.get("/data")
    assert (auth.fetches, upstream.issued) == (2, 2)


async def test_session_expiry_reauths_and_replays_once(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """An upstream that ends the session costs one re-auth and one replay; the caller sees 200."""
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        await client.get("/data")
        upstream.expire()
        response = await client.get("/data")
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert (auth.fetches, auth.reauths, upstream.issued) == (2, 1, 2)
    assert (upstream.data_requests, upstream.rejected) == (3, 1)


async def test_fifty_calls_in_one_expiry_reauth_once(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """Fifty calls refused in the same expiry share one re-auth, and every one gets 200."""
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        await client.get("/data")
        upstream.expire()
        upstream.token_gate = gate = asyncio.Event()  # the re-auth waits until all were refused
        calls = [asyncio.create_task(client.get("/data")) for _ in range(50)]
        await until(lambda: upstream.rejected == 50)
        gate.set()
        answers = await asyncio.gather(*calls)
    assert [r.status_code for r in answers] == [200] * 50
    assert (upstream.issued, upstream.token_requests) == (2, 2)
    assert (auth.fetches, auth.reauths) == (2, 1)
    assert upstream.data_requests == 1 + 50 + 50


async def test_second_rejection_is_returned_as_is(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """A replay refused again is the caller's answer: one re-auth, two sends, no loop."""
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        await client.get("/data")
        upstream.reject_all = True
        response = await client.get("/data")
    assert response.status_code == 401
    assert (auth.reauths, upstream.issued, upstream.data_requests) == (1, 2, 3)


async def test_renew_skips_a_token_already_replaced(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """A rejection of a token that was already renewed returns the new one without fetching."""
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    first = await auth.token()
    second = await auth.renew(first)
    assert await auth.renew(first) == second != first
    assert (auth.fetches, auth.reauths, upstream.issued) == (2, 1, 2)


async def test_auth_timeout_fails_every_waiter_and_is_not_cached(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """A hanging token endpoint fails every waiting call; the failure is not kept."""
    upstream.token_hang = True
    config = TokenConfig(auth_timeout=0.5)
    auth = UpstreamAuth("crm", fetcher(upstream, token_client), config)
    async with api(upstream, auth) as client:
        outcomes = await asyncio.gather(
            *(client.get("/data") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, UpstreamAuthFailed) for o in outcomes)
        assert auth.fetches == 1
        assert len({id(o) for o in outcomes}) == 5  # each waiter raises its own error
        upstream.token_hang = False
        response = await client.get("/data")
    assert response.status_code == 200
    assert (auth.fetches, upstream.issued, upstream.data_requests) == (2, 1, 1)
    error = outcomes[0]
    assert isinstance(error, UpstreamAuthFailed)
    assert error.dependency == "crm"
    assert error.status == 503
    assert error.retry_after == 1
    assert error.__cause__ is None
    assert error.__suppress_context__


async def test_cancelled_waiter_leaves_the_fetch_to_the_others(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """Cancelling the caller that started a fetch does not cancel it for the callers sharing it."""
    upstream.token_gate = gate = asyncio.Event()
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    starter = asyncio.create_task(auth.token())
    await until(lambda: upstream.token_requests == 1)
    other = asyncio.create_task(auth.token())
    await asyncio.sleep(0)
    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    gate.set()
    assert await other == "token-1"
    assert (auth.fetches, upstream.token_requests, upstream.issued) == (1, 1, 1)


async def test_fetch_outlives_all_its_waiters(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """With every waiter cancelled the fetch still completes, and its token is kept."""
    upstream.token_gate = gate = asyncio.Event()
    auth = UpstreamAuth("crm", fetcher(upstream, token_client))
    async with api(upstream, auth) as client:
        call = asyncio.create_task(client.get("/data"))
        await until(lambda: upstream.token_requests == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        gate.set()
        await until(lambda: upstream.issued == 1)
        response = await client.get("/data")
    assert response.status_code == 200
    assert (auth.fetches, upstream.token_requests, upstream.issued) == (1, 1, 1)


async def test_failing_fetch_is_refused_without_its_text(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """Any exception from fetch becomes UpstreamAuthFailed that carries none of its message."""
    failures = 0

    async def fetch() -> Token:
        nonlocal failures
        failures += 1
        raise ValueError(f"bad credentials {SECRET}")

    auth = UpstreamAuth("crm", fetch)
    with pytest.raises(UpstreamAuthFailed) as caught:
        await auth.token()
    with pytest.raises(UpstreamAuthFailed):
        await auth.token()
    assert failures == 2
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.detail)
    assert caught.value.__cause__ is None


async def test_tokens_and_secrets_never_logged(
    upstream: FakeUpstream, token_client: httpx.AsyncClient
) -> None:
    """Fetches, re-auths and failures are logged with their reason, never a token or secret."""
    clock = ManualClock(0.0)
    fetch = fetcher(upstream, token_client)
    auth = UpstreamAuth("crm", fetch, TokenConfig(auth_timeout=0.5), clock=clock)
    with capture_logs() as logs:
        async with api(upstream, auth) as client:
            await client.get("/data")
            upstream.expire()
            await client.get("/data")
            clock.now = 700.0
            await client.get("/data")
            upstream.token_hang = True
            clock.now = 1400.0
            with pytest.raises(UpstreamAuthFailed):
                await client.get("/data")
    fetched = [e for e in logs if e["event"] == "outbound.token_fetched"]
    assert [e["reason"] for e in fetched] == ["initial", "rejected", "expiring"]
    assert all(e["dependency"] == "crm" and e["duration_ms"] >= 0 for e in fetched)
    [failed] = [e for e in logs if e["event"] == "outbound.token_fetch_failed"]
    assert (failed["dependency"], failed["error"], failed["reason"]) == (
        "crm",
        "TimeoutError",
        "expiring",
    )
    text = repr(logs)
    assert upstream.issued == 3
    assert all(f"token-{n}" not in text for n in range(1, 4))
    assert SECRET not in text


async def test_sync_clients_are_refused(upstream: FakeUpstream) -> None:
    """A sync client cannot use the auth: its single-flight fetch needs an event loop."""

    async def fetch() -> Token:
        return Token("unused")

    auth = UpstreamAuth("crm", fetch)
    with httpx.Client(base_url=upstream.url, auth=auth) as client, pytest.raises(RuntimeError):
        client.get("/data")
    assert upstream.data_requests == 0


def test_token_values_are_checked() -> None:
    """An empty token or a negative or infinite lifetime is refused when made."""
    bad: list[tuple[str, float | None]] = [("", None), ("t", -1.0), ("t", float("inf"))]
    for value, expires_in in bad:
        with pytest.raises(ValueError, match=r"token|expires_in"):
            Token(value, expires_in)
