-- Brute-force protection (src/throttle/): the counters live in memory, not in tables; this is
-- how admins see them. voucher.unlock, voucher.lockout_fingerprint and the settings behind
-- voucher.configure are Rust.

CREATE VIEW voucher.lockouts AS
SELECT kind, fingerprint, failures, refused, lockouts, locked_at, locked_until
  FROM voucher._lockouts();
COMMENT ON VIEW voucher.lockouts IS
    'Current lock-outs (admin keys: the tenant''s customers, clients and keys; operators: source '
    'addresses of authenticate). Identities appear as keyed fingerprints, never in plaintext.';
