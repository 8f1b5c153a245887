"""Access tokens: round trips, the JWT attack set, config validation, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from hardened.auth.tokens import (
    MAX_TOKEN_BYTES,
    AccessClaims,
    AccessTokenConfig,
    AccessTokens,
    Algorithm,
    VerificationKey,
    revoked_error,
)
from hardened.errors import Unauthorized, problem_for

NOW = 1_700_000_000.0
SECRET = secrets.token_urlsafe(48)
ISS = "https://auth.example.test"
AUD = "shopfront"
INVALID = "auth.invalid_token"
EXPIRED = "auth.token_expired"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def pem_private(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def pem_public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def hs() -> AccessTokens:
    return AccessTokens(AccessTokenConfig(issuer=ISS, audience=AUD, signing_key=SECRET))


@pytest.fixture(scope="module")
def rs(rsa_key: rsa.RSAPrivateKey) -> AccessTokens:
    config = AccessTokenConfig(
        issuer=ISS, audience=AUD, algorithm="RS256", signing_key=pem_private(rsa_key)
    )
    return AccessTokens(config)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "tenant": "t-1",
        "sid": "fam-1",
        "jti": "j" * 32,
        "iat": int(NOW),
        "exp": int(NOW) + 900,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(header: Any, payload: Any, *, key: str = SECRET, digest: str = "sha256") -> str:
    """Build a compact JWS by hand so PyJWT's encoder cannot tidy up the attack."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    mac = hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(mac)}"


def hs_token(payload: Any, *, key: str = SECRET, alg: str = "HS256") -> str:
    digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}[alg]
    return sign({"alg": alg, "typ": "at+jwt"}, payload, key=key, digest=digest)


def refused(tokens: AccessTokens, token: Any, code: str = INVALID, now: float = NOW) -> str:
    """Assert the token is refused with ``code``, rendered as a 401 without the token."""
    with pytest.raises(Unauthorized) as info:
        tokens.verify(token, now=now)
    exc = info.value
    assert exc.code == code
    problem = problem_for(exc)
    assert problem.status == 401
    assert problem.code == code
    assert problem.headers == {"www-authenticate": 'Bearer error="invalid_token"'}
    body = problem.body().decode()
    if isinstance(token, str) and len(token) > 8:
        assert token not in body
        assert token not in repr(exc.context)
        assert all(part not in body for part in token.split(".") if len(part) > 8)
    assert exc.__cause__ is None
    reason: str = exc.context["reason"]
    return reason


@pytest.mark.parametrize("algorithm", ["HS256", "HS512", "RS256", "ES256", "EdDSA"])
def test_round_trip(algorithm: Algorithm, rsa_key: rsa.RSAPrivateKey) -> None:
    """A token issued by a config verifies under it and returns the claims and extras."""
    keys: dict[str, Any] = {
        "HS256": SECRET,
        "HS512": secrets.token_bytes(64),
        "RS256": pem_private(rsa_key),
        "ES256": pem_private(ec.generate_private_key(ec.SECP256R1())),
        "EdDSA": pem_private(ed25519.Ed25519PrivateKey.generate()).decode(),
    }
    config = AccessTokenConfig(
        issuer=ISS, audience=AUD, algorithm=algorithm, signing_key=keys[algorithm]
    )
    tokens = AccessTokens(config)
    token = tokens.issue(
        subject="u1", tenant="t1", session_id="s1", extra={"scope": "orders"}, now=NOW
    )
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "typ": "at+jwt"}
    got = tokens.verify(token, now=NOW + 10)
    assert (got.sub, got.tenant, got.sid, got.iat, got.exp) == ("u1", "t1", "s1", NOW, NOW + 900)
    assert len(got.jti) == 32
    assert dict(got.extra) == {"scope": "orders"}


def test_verification_key_given_explicitly(rsa_key: rsa.RSAPrivateKey) -> None:
    """An RS256 config with the matching public PEM verifies what it signs."""
    config = AccessTokenConfig(
        issuer=ISS,
        audience=AUD,
        algorithm="RS256",
        signing_key=pem_private(rsa_key),
        verification_key=pem_public(rsa_key),
    )
    tokens = AccessTokens(config)
    assert tokens.verify(tokens.issue(subject="u", tenant="t", session_id="s")).sub == "u"


def test_jti_is_unique_per_token(hs: AccessTokens) -> None:
    """Two tokens issued in the same second carry different jti values."""
    first = hs.verify(hs.issue(subject="u", tenant="t", session_id="s", now=NOW), now=NOW)
    second = hs.verify(hs.issue(subject="u", tenant="t", session_id="s", now=NOW), now=NOW)
    assert first.jti != second.jti


def test_alg_none_is_refused(hs: AccessTokens) -> None:
    """A hand-crafted unsigned token with alg none is refused before decoding."""
    token = f"{segment({'alg': 'none', 'typ': 'at+jwt'})}.{segment(claims())}."
    assert refused(hs, token) == "alg_mismatch"
    for alg in ("None", "NONE", "nOnE"):
        assert refused(hs, f"{segment({'alg': alg, 'typ': 'at+jwt'})}.{segment(claims())}.")


def test_hs256_signed_with_the_rsa_public_key_is_refused(
    rs: AccessTokens, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The classic confusion: HS256 keyed with the RS256 public PEM never verifies."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'at+jwt'})}.{segment(claims())}"
    for public in (pem_public(rsa_key), pem_public(rsa_key).strip()):
        mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        assert refused(rs, f"{signing_input}.{b64(mac)}") == "alg_mismatch"
    # Same MAC presented under the configured alg: just a bad signature.
    relabelled = f"{segment({'alg': 'RS256', 'typ': 'at+jwt'})}.{segment(claims())}"
    mac = hmac.new(pem_public(rsa_key), relabelled.encode(), hashlib.sha256).digest()
    assert refused(rs, f"{relabelled}.{b64(mac)}") == "bad_signature"


def test_expired_beyond_leeway_is_token_expired(hs: AccessTokens) -> None:
    """A token past exp by more than the leeway is refused as expired."""
    token = hs.issue(subject="u", tenant="t", session_id="s", now=NOW)
    assert refused(hs, token, EXPIRED, now=NOW + 900 + 30) == "expired"


def test_expired_within_leeway_is_accepted(hs: AccessTokens) -> None:
    """A token past exp by less than the leeway still verifies."""
    token = hs.issue(subject="u", tenant="t", session_id="s", now=NOW)
    assert hs.verify(token, now=NOW + 900 + 29).sub == "u"


def test_expired_and_otherwise_invalid_is_invalid(hs: AccessTokens) -> None:
    """Expiry is only disclosed for a token that passed every other check."""
    token = hs_token(claims(aud="other", exp=int(NOW) - 3600, iat=int(NOW) - 4000))
    assert refused(hs, token) == "wrong_audience"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "other"}, "wrong_audience"),
        ({"aud": [AUD, "other"]}, "wrong_audience"),
        ({"iss": "https://evil.test"}, "wrong_issuer"),
        ({"jti": None}, "missing_claim:jti"),
        ({"sid": None}, "missing_claim:sid"),
        ({"tenant": None}, "missing_claim:tenant"),
        ({"sub": None}, "missing_claim:sub"),
        ({"iat": None}, "missing_claim:iat"),
        ({"exp": None}, "missing_claim:exp"),
        ({"aud": None}, "missing_claim:aud"),
        ({"iss": None}, "missing_claim:iss"),
        ({"iat": int(NOW) + 3600, "exp": int(NOW) + 4500}, "iat_in_future"),
        ({"nbf": int(NOW) + 3600}, "not_yet_valid"),
        ({"exp": str(int(NOW) + 900)}, "bad_claim:exp"),
        ({"iat": True}, "bad_claim:iat"),
        ({"iat": NOW + 0.5}, "bad_claim:iat"),
        ({"sub": 42}, "bad_claim:sub"),
        ({"tenant": ""}, "bad_claim:tenant"),
        ({"sid": ["a"]}, "bad_claim:sid"),
        ({"exp": int(NOW)}, "exp_before_iat"),
    ],
)
def test_bad_claims_are_invalid(hs: AccessTokens, overrides: dict[str, Any], reason: str) -> None:
    """Wrong audience or issuer, missing or mistyped claims, future iat: all invalid."""
    assert refused(hs, hs_token(claims(**overrides))) == reason


def test_iat_within_leeway_in_the_future_is_accepted(hs: AccessTokens) -> None:
    """Clock skew up to the leeway on iat is tolerated."""
    token = hs_token(claims(iat=int(NOW) + 30, exp=int(NOW) + 930))
    assert hs.verify(token, now=NOW).iat == NOW + 30


def test_tampered_payload_is_refused(hs: AccessTokens) -> None:
    """Flipping a claim while keeping the signature fails the signature check."""
    token = hs.issue(subject="u", tenant="t", session_id="s", now=NOW)
    header, body, signature = token.split(".")
    original = jwt.decode(token, options={"verify_signature": False})
    for change in ({"sub": "admin"}, {"tenant": "t-2"}, {"exp": int(NOW) + 10**6}):
        payload = segment({**original, **change})
        assert payload != body
        assert refused(hs, f"{header}.{payload}.{signature}") == "bad_signature"


def test_signature_by_another_key_is_refused(hs: AccessTokens, rs: AccessTokens) -> None:
    """A token signed with a different secret or private key is refused."""
    assert refused(hs, hs_token(claims(), key=secrets.token_urlsafe(48))) == "bad_signature"
    other = AccessTokens(
        AccessTokenConfig(
            issuer=ISS,
            audience=AUD,
            algorithm="RS256",
            signing_key=pem_private(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        )
    )
    token = other.issue(subject="u", tenant="t", session_id="s", now=NOW)
    assert refused(rs, token) == "bad_signature"


def test_other_algorithm_in_header_is_refused(hs: AccessTokens) -> None:
    """An HS512 header on an HS256 config is refused even when the MAC is right."""
    assert refused(hs, hs_token(claims(), alg="HS512")) == "alg_mismatch"
    assert refused(hs, hs_token(claims(), alg="HS384")) == "alg_mismatch"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "HS256"}, "wrong_typ"),
        ({"alg": "HS256", "typ": "JWT"}, "wrong_typ"),
        ({"alg": "HS256", "typ": 1}, "wrong_typ"),
        ({"alg": "HS256", "typ": "at+jwt", "jku": "https://evil.test/jwks"}, "unexpected_header"),
        ({"alg": "HS256", "typ": "at+jwt", "b64": False}, "malformed_header"),
        ({"alg": "HS256", "typ": "at+jwt", "crit": ["exp"]}, "malformed_header"),
        ({"alg": "HS256", "typ": "at+jwt", "kid": 7}, "malformed_header"),
        ({"typ": "at+jwt"}, "alg_mismatch"),
    ],
)
def test_unexpected_headers_are_refused(
    hs: AccessTokens, header: dict[str, Any], reason: str
) -> None:
    """The header must be ours: the pinned alg, typ at+jwt, nothing that changes processing."""
    assert refused(hs, sign(header, claims())) == reason


def test_application_at_jwt_typ_is_accepted(hs: AccessTokens) -> None:
    """The full media type form of typ (RFC 9068) is accepted."""
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"typ": "application/at+jwt"})
    assert hs.verify(token, now=NOW).sub == "user-1"


def test_oversized_token_is_refused_before_decoding(hs: AccessTokens) -> None:
    """A correctly signed token over 8 KiB is refused."""
    token = hs_token(claims(pad="x" * MAX_TOKEN_BYTES))
    assert len(token) > MAX_TOKEN_BYTES
    assert refused(hs, token) == "too_large"


def test_issue_refuses_to_mint_an_oversized_token(hs: AccessTokens) -> None:
    """issue() never produces a token verify() would refuse for size."""
    with pytest.raises(ValueError, match="exceed"):
        hs.issue(subject="u", tenant="t", session_id="s", extra={"pad": "x" * MAX_TOKEN_BYTES})


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "a",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d",
        "Bearer x.y.z",
        " " + "eyJ.eyJ.x",
        "ü.ü.ü",
        "eyJhbGciOiJIUzI1NiJ9.e30=.abc",
        "e30.e30.",
        "W10.e30.",
        "bnVsbA.e30.",
        "\x00.\x00.\x00",
        b"a.b.c",
        None,
        12,
    ],
)
def test_garbage_is_invalid(hs: AccessTokens, garbage: Any) -> None:
    """Anything that is not a compact JWS of ours is an invalid token."""
    refused(hs, garbage)


def test_deeply_nested_json_is_invalid(hs: AccessTokens) -> None:
    """Nesting deep enough to hit the recursion limit is refused, not a crash."""
    deep = b64(b"[" * 5000 + b"]" * 5000)
    refused(hs, f"{deep}.{segment(claims())}.")
    header = segment({"alg": "HS256", "typ": "at+jwt"})
    signing_input = f"{header}.{deep}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    refused(hs, f"{signing_input}.{b64(mac)}")


def test_huge_integer_claim_is_invalid(hs: AccessTokens) -> None:
    """An integer beyond Python's int-parsing limit is refused, not a crash."""
    header = segment({"alg": "HS256", "typ": "at+jwt"})
    payload = b64(b'{"exp":' + b"9" * 5000 + b"}")
    signing_input = f"{header}.{payload}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert refused(hs, f"{signing_input}.{b64(mac)}") == "malformed"


def test_extra_claims_cannot_override_registered_ones(hs: AccessTokens) -> None:
    """Extra keys colliding with registered or configured claims are a ValueError."""
    for key in ("sub", "exp", "aud", "iss", "iat", "jti", "sid", "nbf", "tenant"):
        with pytest.raises(ValueError, match="collide"):
            hs.issue(subject="u", tenant="t", session_id="s", extra={key: "x"})


def test_issue_requires_identities(hs: AccessTokens) -> None:
    """Empty subject, tenant or session id is refused at issue time."""
    with pytest.raises(ValueError, match="subject"):
        hs.issue(subject="", tenant="t", session_id="s")
    with pytest.raises(ValueError, match="session_id"):
        hs.issue(subject="u", tenant="t", session_id="")


def test_custom_tenant_claim() -> None:
    """The tenant claim name is configurable and required under that name."""
    config = AccessTokenConfig(issuer=ISS, audience=AUD, signing_key=SECRET, tenant_claim="org")
    tokens = AccessTokens(config)
    token = tokens.issue(subject="u", tenant="acme", session_id="s", now=NOW)
    assert jwt.decode(token, options={"verify_signature": False})["org"] == "acme"
    assert tokens.verify(token, now=NOW).tenant == "acme"
    assert refused(tokens, hs_token(claims())) == "missing_claim:org"


def test_revoked_error_is_a_401_with_a_stable_code() -> None:
    """The revocation refusal renders as 401 auth.token_revoked with the bearer challenge."""
    problem = problem_for(revoked_error())
    assert (problem.status, problem.code) == (401, "auth.token_revoked")
    assert problem.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signing_key": "x" * 31}, "at least 32 bytes"),
        ({"signing_key": secrets.token_bytes(32), "algorithm": "HS512"}, "at least 64"),
        ({"signing_key": "changeme" * 8}, "placeholder"),
        ({"signing_key": "ab" * 32}, "random"),
        ({"signing_key": SECRET, "verification_key": SECRET + "x"}, "equal"),
        ({"signing_key": SECRET, "algorithm": "RS256"}, "PEM private key"),
        ({"signing_key": SECRET, "algorithm": "EdDSA"}, "PEM private key"),
        ({"signing_key": SECRET, "algorithm": "none"}, "algorithm"),
        ({"signing_key": SECRET, "leeway": 121}, "leeway"),
        ({"signing_key": SECRET, "leeway": -1}, "leeway"),
        ({"signing_key": SECRET, "ttl": 0}, "ttl"),
        ({"signing_key": SECRET, "ttl": 86_401}, "ttl"),
        ({"signing_key": SECRET, "tenant_claim": "sub"}, "tenant_claim"),
        ({"signing_key": SECRET, "issuer": ""}, "issuer"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], match: str) -> None:
    """Weak, mismatched or wrongly typed keys and out-of-range settings refuse construction."""
    with pytest.raises(ValueError, match=match) as info:
        AccessTokenConfig(**{"issuer": ISS, "audience": AUD, **kwargs})
    assert str(kwargs["signing_key"]) not in str(info.value)


def test_pem_as_hmac_secret_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """A public or private PEM given to an HMAC algorithm is refused (HS/RS confusion)."""
    for key in (pem_public(rsa_key), pem_private(rsa_key), b"\n  " + pem_public(rsa_key)):
        with pytest.raises(ValueError, match="asymmetric"):
            AccessTokenConfig(issuer=ISS, audience=AUD, signing_key=key)
        with pytest.raises(ValueError, match="asymmetric"):
            AccessTokenConfig(issuer=ISS, audience=AUD, signing_key=key.decode(), algorithm="HS512")


def test_asymmetric_key_checks(rsa_key: rsa.RSAPrivateKey) -> None:
    """Wrong key type, small RSA, wrong curve, encrypted PEM or a foreign public key refuse."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    p384 = ec.generate_private_key(ec.SECP384R1())
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"algorithm": "RS256", "signing_key": pem_private(small)}, "2048"),
        ({"algorithm": "ES256", "signing_key": pem_private(p384)}, "P-256"),
        ({"algorithm": "ES256", "signing_key": pem_private(rsa_key)}, "P-256"),
        ({"algorithm": "EdDSA", "signing_key": pem_private(rsa_key)}, "Ed25519"),
        ({"algorithm": "RS256", "signing_key": pem_public(rsa_key)}, "private key"),
        ({"algorithm": "RS256", "signing_key": encrypted}, "unencrypted"),
        (
            {
                "algorithm": "RS256",
                "signing_key": pem_private(rsa_key),
                "verification_key": pem_public(other),
            },
            "public half",
        ),
        (
            {"algorithm": "RS256", "signing_key": pem_private(rsa_key), "verification_key": "x"},
            "PEM public key",
        ),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            AccessTokenConfig(issuer=ISS, audience=AUD, **kwargs)


def test_reprs_hide_keys(hs: AccessTokens, rsa_key: rsa.RSAPrivateKey, rs: AccessTokens) -> None:
    """Neither the config nor the service repr contains key material."""
    assert SECRET not in repr(hs.config)
    assert SECRET not in repr(hs)
    assert "signing_key" not in repr(hs.config)
    assert "BEGIN" not in repr(rs.config)
    assert "BEGIN" not in repr(rs)
    assert "HS256" in repr(hs.config)


def test_metrics_count_outcomes(hs: AccessTokens) -> None:
    """Issued, valid, expired and invalid outcomes are each counted."""

    def value(outcome: str) -> float:
        sample = REGISTRY.get_sample_value(
            "hardened_auth_access_tokens_total", {"outcome": outcome}
        )
        return sample or 0.0

    before = {o: value(o) for o in ("issued", "valid", "expired", "invalid")}
    token = hs.issue(subject="u", tenant="t", session_id="s", now=NOW)
    hs.verify(token, now=NOW)
    with pytest.raises(Unauthorized):
        hs.verify(token, now=NOW + 10_000)
    with pytest.raises(Unauthorized):
        hs.verify("nope")
    after = {o: value(o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        "issued": 1,
        "valid": 1,
        "expired": 1,
        "invalid": 1,
    }


# -- key rotation -----------------------------------------------------------------------------

OLD_SECRET = secrets.token_urlsafe(48)
OVERLAP_END = NOW + 300  # deliberately before the token's exp, so the cut-off is not_after's


def hs_config(
    key: str = SECRET, kid: str | None = "k2", previous: tuple[VerificationKey, ...] = ()
) -> AccessTokenConfig:
    return AccessTokenConfig(
        issuer=ISS, audience=AUD, signing_key=key, kid=kid, previous_keys=previous
    )


def rotated_hs() -> AccessTokens:
    """Current key SECRET (k2); OLD_SECRET (k1) verifies until OVERLAP_END."""
    old = VerificationKey(kid="k1", key=OLD_SECRET, not_after=OVERLAP_END)
    return AccessTokens(hs_config(previous=(old,)))


def test_kid_of_the_current_key_is_in_every_header() -> None:
    """A config with a kid names it in the header of every token it issues."""
    tokens = AccessTokens(hs_config())
    token = tokens.issue(subject="u", tenant="t", session_id="s", now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt", "kid": "k2"}
    assert tokens.verify(token, now=NOW).sub == "u"


def test_previous_hmac_key_verifies_during_the_overlap_and_not_after_it() -> None:
    """A token signed before the rotation verifies until not_after, then is retired_kid."""
    before = AccessTokens(hs_config(OLD_SECRET, kid="k1"))
    token = before.issue(subject="u", tenant="t", session_id="s", now=NOW)
    after = rotated_hs()
    assert after.verify(token, now=NOW + 10).sub == "u"
    assert after.verify(token, now=OVERLAP_END).sub == "u"
    assert refused(after, token, now=OVERLAP_END + 1) == "retired_kid"
    fresh = after.issue(subject="u", tenant="t", session_id="s", now=NOW)
    assert after.verify(fresh, now=OVERLAP_END + 1).sub == "u"
    # Once the previous key is dropped from the ring, its kid is unknown.
    assert refused(AccessTokens(hs_config()), token, now=NOW + 10) == "unknown_kid"


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_previous_asymmetric_key_verifies_during_the_overlap(
    algorithm: Algorithm, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The retired private key, or its public PEM, verifies its tokens until not_after."""
    make: dict[str, Any] = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }
    old_key = rsa_key if algorithm == "RS256" else make[algorithm]()
    new_key = make[algorithm]()

    def config(key: Any, kid: str, previous: tuple[VerificationKey, ...] = ()) -> AccessTokenConfig:
        return AccessTokenConfig(
            issuer=ISS,
            audience=AUD,
            algorithm=algorithm,
            signing_key=pem_private(key),
            kid=kid,
            previous_keys=previous,
        )

    token = AccessTokens(config(old_key, "k1")).issue(
        subject="u", tenant="t", session_id="s", now=NOW
    )
    for retired in (pem_private(old_key), pem_public(old_key)):
        ring = (VerificationKey(kid="k1", key=retired, not_after=OVERLAP_END),)
        after = AccessTokens(config(new_key, "k2", ring))
        assert after.verify(token, now=NOW + 10).sub == "u"
        assert refused(after, token, now=OVERLAP_END + 1) == "retired_kid"


def test_unknown_kid_is_invalid_token() -> None:
    """A kid naming no key of ours is auth.invalid_token with reason unknown_kid."""
    tokens = rotated_hs()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "k9"}
    assert refused(tokens, sign(header, claims())) == "unknown_kid"
    assert refused(tokens, sign({**header, "kid": ""}, claims())) == "unknown_kid"
    # A config that names no kids knows none: a token naming one is refused too.
    assert refused(AccessTokens(hs_config(kid=None)), sign(header, claims())) == "unknown_kid"


def test_the_kid_picks_the_key_nothing_is_tried() -> None:
    """A token signed by one ring key but naming the other fails: keys are never tried in turn."""
    tokens = rotated_hs()
    by_old_as_new = sign({"alg": "HS256", "typ": "at+jwt", "kid": "k2"}, claims(), key=OLD_SECRET)
    by_new_as_old = sign({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}, claims(), key=SECRET)
    assert refused(tokens, by_old_as_new) == "bad_signature"
    assert refused(tokens, by_new_as_old) == "bad_signature"


def test_token_without_kid_verifies_against_the_current_key_only() -> None:
    """A kid-less token (issued before kids) verifies under the current key, never a previous."""
    tokens = rotated_hs()
    assert tokens.verify(hs_token(claims()), now=NOW).sub == "user-1"
    assert refused(tokens, hs_token(claims(), key=OLD_SECRET)) == "bad_signature"


def test_a_previous_key_never_signs() -> None:
    """Tokens of a rotated config are signed by the current key and name it, never the previous."""
    tokens = rotated_hs()
    token = tokens.issue(subject="u", tenant="t", session_id="s", now=NOW)
    assert jwt.get_unverified_header(token)["kid"] == "k2"
    for key, signed in ((SECRET, True), (OLD_SECRET, False)):
        try:
            jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                options={"verify_signature": True, "verify_exp": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            assert not signed
        else:
            assert signed


def test_keyring_hides_keys_in_reprs() -> None:
    """Neither the config, its previous keys nor the service repr shows a previous key."""
    tokens = rotated_hs()
    for text in (repr(tokens.config), repr(tokens.config.previous_keys), repr(tokens)):
        assert OLD_SECRET not in text
        assert SECRET not in text
    assert "k1" in repr(tokens.config)


def old(key: Any = OLD_SECRET, kid: str = "k1", not_after: Any = OVERLAP_END) -> VerificationKey:
    return VerificationKey(kid=kid, key=key, not_after=not_after)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"previous_keys": (old(),), "kid": None}, "need a kid"),
        ({"previous_keys": (old(kid="k2"),)}, "unique"),
        ({"previous_keys": (old(), old())}, "unique"),
        ({"previous_keys": (old("x" * 31),)}, "at least 32 bytes"),
        ({"previous_keys": (old("changeme" * 8),)}, "placeholder"),
        ({"previous_keys": (old("ab" * 32),)}, "random"),
        ({"previous_keys": (old(SECRET),)}, "current signing key"),
        ({"previous_keys": [old()]}, "tuple"),
        ({"previous_keys": (OLD_SECRET,)}, "tuple"),
        ({"kid": "k 2"}, "kid"),
        ({"kid": ""}, "kid"),
    ],
)
def test_keyring_validation(kwargs: dict[str, Any], match: str) -> None:
    """Previous keys follow the current key's rules, need kids, and kids are unique."""
    values: dict[str, Any] = {"issuer": ISS, "audience": AUD, "signing_key": SECRET, "kid": "k2"}
    with pytest.raises(ValueError, match=match) as info:
        AccessTokenConfig(**{**values, **kwargs})
    assert OLD_SECRET not in str(info.value)
    assert SECRET not in str(info.value)


def test_asymmetric_previous_keys_are_checked(rsa_key: rsa.RSAPrivateKey) -> None:
    """A previous key of the wrong type, an unparsable one or the current one refuses the config."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    current = ec.generate_private_key(ec.SECP256R1())
    for key, match in (
        (pem_public(p384), "P-256"),
        (pem_private(rsa_key), "P-256"),
        (b"not a key", "PEM public key"),
        (pem_public(current), "current signing key"),
        (pem_private(current), "current signing key"),
    ):
        with pytest.raises(ValueError, match=match):
            AccessTokenConfig(
                issuer=ISS,
                audience=AUD,
                algorithm="ES256",
                signing_key=pem_private(current),
                kid="k2",
                previous_keys=(old(key),),
            )
    with pytest.raises(ValueError, match="asymmetric"):
        AccessTokenConfig(
            issuer=ISS,
            audience=AUD,
            signing_key=SECRET,
            kid="k2",
            previous_keys=(old(pem_public(rsa_key)),),
        )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kid": "bad kid"}, ValueError),
        ({"key": b""}, ValueError),
        ({"not_after": float("inf")}, ValueError),
        ({"not_after": float("nan")}, ValueError),
        ({"not_after": True}, TypeError),
        ({"not_after": "2030-01-01"}, TypeError),
    ],
)
def test_verification_key_validation(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """A previous key needs a plain kid, a key and a finite Unix time."""
    with pytest.raises(error):
        VerificationKey(**{"kid": "k1", "key": OLD_SECRET, "not_after": OVERLAP_END, **kwargs})


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
b64_segment = st.binary(max_size=300).map(b64)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
claim_names = st.sampled_from(
    ["iss", "aud", "sub", "tenant", "sid", "jti", "iat", "exp", "nbf", "x"]
)


def _accept_or_unauthorized(tokens: AccessTokens, token: Any) -> None:
    outcome: AccessClaims | Unauthorized
    try:
        outcome = tokens.verify(token, now=NOW)
    except Unauthorized as exc:
        outcome = exc
    if isinstance(outcome, Unauthorized):
        assert outcome.code in {INVALID, EXPIRED}
        assert problem_for(outcome).status == 401
    else:
        assert isinstance(outcome, AccessClaims)


@FUZZ
@given(raw=st.binary(max_size=2000) | st.text(max_size=2000))
def test_fuzz_random_strings(hs: AccessTokens, raw: bytes | str) -> None:
    """Random byte strings and text never raise anything but Unauthorized."""
    token = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    with pytest.raises(Unauthorized):
        hs.verify(token, now=NOW)


@FUZZ
@given(parts=st.lists(b64_segment, min_size=1, max_size=5))
def test_fuzz_jwt_shaped(hs: AccessTokens, parts: list[str]) -> None:
    """Dot-separated base64url segments never raise anything but Unauthorized."""
    _accept_or_unauthorized(hs, ".".join(parts))


@FUZZ
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "b64", "x"]), json_values, max_size=4
    ),
    payload=json_values,
)
def test_fuzz_random_json_segments(hs: AccessTokens, header: Any, payload: Any) -> None:
    """Arbitrary JSON header and payload with a correct MAC never raise anything else."""
    _accept_or_unauthorized(hs, sign(header, payload))


@FUZZ
@given(payload=st.dictionaries(claim_names, json_values, max_size=10), base=st.booleans())
def test_fuzz_signed_random_claims(hs: AccessTokens, payload: dict[str, Any], base: bool) -> None:
    """Correctly signed tokens with random claim values verify or raise Unauthorized."""
    full = {**claims(), **payload} if base else payload
    _accept_or_unauthorized(hs, hs_token(full))
