"""Who may do what inside a shop: four roles, each with everything the one below has.

==========  ==================================================================
role        adds
==========  ==================================================================
read_only   the shop, catalog, coupons, orders and shipments, the wallet balance
staff       customers (read and write: their emails are personal data), placing
            orders and moving them along (transitions, shipments), SIM activation,
            finding members' KYC records by number
admin       catalog and coupon writes, bulk import, spending and refunding
            credits, members, invitations and API keys (up to their own role),
            KYC verification, platform integrations (their tokens)
owner       owners: only an owner makes, demotes or removes an owner
==========  ==================================================================

Every route declares one of these permissions beside its definition
(``dependencies=[allow("orders:write")]``), `signed_in` for a member's own
account, or `public`; `hardened.testing.assert_authorization` proves the table
over HTTP for every role, with user tokens and API keys alike. Rules a table
cannot express are in the member and key routes: nobody hands out a role above
their own (`grants_up_to`), and a shop always keeps at least one owner.
"""

from __future__ import annotations

from typing import Any

from hardened.auth import Roles, public, signed_in

__all__ = ["ROLES", "allow", "grants_up_to", "public", "signed_in", "user_only"]

ROLES = Roles.ladder(
    (
        "read_only",
        {
            "shop:read",
            "catalog:read",
            "coupons:read",
            "orders:read",
            "wallet:read",
        },
    ),
    (
        "staff",
        {"customers:read", "customers:write", "orders:write", "sims:activate", "kyc:read"},
    ),
    (
        "admin",
        {
            "catalog:write",
            "coupons:write",
            "orders:import",
            "wallet:spend",
            "members:read",
            "members:manage",
            "api_keys:manage",
            "kyc:verify",
            "integrations:manage",
        },
    ),
    ("owner", {"owners:manage"}),
)


def allow(permission: str) -> Any:
    """Route dependency: the caller's role must grant ``permission`` (403 otherwise)."""
    return ROLES.require(permission)


def user_only() -> Any:
    """Route dependency: a signed-in user (their own account), never an API key."""
    return signed_in(kind="user")


def grants_up_to(caller_role: str | None, role: str) -> bool:
    """Whether a caller with ``caller_role`` may give ``role`` to someone (or to a key)."""
    return caller_role is not None and ROLES.at_least(caller_role, role)
