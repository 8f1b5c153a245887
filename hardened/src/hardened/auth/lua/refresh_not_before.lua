-- RefreshTokens.not_before: the user's not-before stamp ("seconds.micros"), or nil.
-- KEYS[1] not-before string (…:nbf). Twin: hardened.auth.refresh._not_before
return redis.call('GET', KEYS[1])
