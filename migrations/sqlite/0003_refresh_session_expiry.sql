-- The periodic purge of refresh sessions finds expired tokens and long-revoked families by these.
CREATE INDEX refresh_tokens_expiry ON refresh_tokens(expires_at);
CREATE INDEX refresh_families_revoked ON refresh_families(revoked_at) WHERE revoked_at IS NOT NULL;
