"""The package's refusals: a spent quota (429) and a cost no policy can admit (422)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hardened.errors import RateLimited, ValidationFailed

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CostExceedsLimit", "QuotaExceeded"]


class QuotaExceeded(RateLimited):
    """429 naming the violated policy (never its key); type ``...:ratelimit.quota_exceeded``."""

    code = "ratelimit.quota_exceeded"
    title = "Quota exceeded"

    def __init__(
        self,
        detail: str | None = None,
        *,
        violated_policy: str,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            detail,
            retry_after=retry_after,
            context={"policy": violated_policy},
            headers=headers,
        )
        self.violated_policy = violated_policy

    def extensions(self) -> dict[str, Any]:
        return {"violated_policy": self.violated_policy}


class CostExceedsLimit(ValidationFailed):
    """422: the request costs more than the policy could ever admit; retrying cannot help."""

    code = "ratelimit.cost_exceeds_limit"
    title = "Cost exceeds the rate limit"

    def __init__(
        self, detail: str | None = None, *, violated_policy: str, cost: int, max_cost: int
    ) -> None:
        super().__init__(
            detail, context={"policy": violated_policy, "cost": cost, "max_cost": max_cost}
        )
        self.violated_policy = violated_policy
        self.cost = cost
        self.max_cost = max_cost

    def extensions(self) -> dict[str, Any]:
        return {
            "violated_policy": self.violated_policy,
            "cost": self.cost,
            "max_cost": self.max_cost,
        }
