-- RefreshTokens.session_active: whether a family (a sign-in session) is still live.
-- KEYS[1] family hash (…:fam:<family>). Logout, reuse, eviction and revoke-all delete it,
-- so its access tokens die with it; no clock is compared. Returns 1 or 0.
-- Twin: hardened.auth.refresh._session
return redis.call('EXISTS', KEYS[1])
