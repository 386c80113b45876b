//! Opening a tenant context: `authenticate` with an API key, `act_as` for operators, `logout`.
//! Refused keys and `act_as` are audited through `crate::common::events`, so they are recorded
//! even when the calling transaction rolls back.

use pgrx::prelude::*;

use super::context::*;
use super::definer::as_definer;
use super::keys;
use super::revocation;
use super::roles::KeyRole;
use crate::common::auth_guard;
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::{self, Event};
use crate::common::gucs;

/// One row of `voucher.credential` found by its prefix during authentication.
struct Candidate {
    tenant: [u8; 16],
    key_id: [u8; 16],
    hash: Vec<u8>,
    role: String,
    usable: bool,
    touch_due: bool,
    expires_at: Option<f64>,
}

fn find_candidates(prefix: &str) -> Vec<Candidate> {
    let interval = gucs::KEY_LAST_USED_INTERVAL.get() as f64;
    with_probe(prefix, || {
        as_definer(|| {
            Spi::connect(|client| {
                let rows = client
                    .select(
                        "SELECT tenant_id, key_id, key_hash, role, \
                                revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()), \
                                last_used_at IS NULL \
                                  OR last_used_at < now() - make_interval(secs => $2), \
                                extract(epoch FROM expires_at)::float8 \
                         FROM voucher.credential WHERE prefix = $1",
                        None,
                        &[prefix.into(), interval.into()],
                    )
                    .expect("credential lookup runs");
                rows.map(|r| Candidate {
                    tenant: uuid_bytes(&r.get::<pgrx::Uuid>(1).unwrap().unwrap()),
                    key_id: uuid_bytes(&r.get::<pgrx::Uuid>(2).unwrap().unwrap()),
                    hash: r.get::<Vec<u8>>(3).unwrap().unwrap_or_default(),
                    role: r.get::<String>(4).unwrap().unwrap_or_default(),
                    usable: r.get::<bool>(5).unwrap().unwrap_or(false),
                    touch_due: r.get::<bool>(6).unwrap().unwrap_or(false),
                    expires_at: r.get::<f64>(7).unwrap(),
                })
                .collect()
            })
        })
    })
}

/// Refreshes `last_used_at`, skipping a row another session holds locked: never waits.
fn touch_last_used(tenant: [u8; 16], key_id: [u8; 16]) {
    // SAFETY: reads a backend-local flag.
    if unsafe { pg_sys::XactReadOnly } {
        return; // a read-only transaction or a hot standby: authentication still works
    }
    as_definer(|| {
        Spi::run_with_args(
            "UPDATE voucher.credential SET last_used_at = now() \
             WHERE ctid = (SELECT ctid FROM voucher.credential \
                           WHERE tenant_id = $1 AND key_id = $2 FOR UPDATE SKIP LOCKED)",
            &[
                pgrx::Uuid::from_bytes(tenant).into(),
                pgrx::Uuid::from_bytes(key_id).into(),
            ],
        )
        .expect("last_used_at update runs")
    });
}

fn authenticate_impl(api_key: Option<&str>, session: bool) -> Result<pgrx::Uuid> {
    let key = api_key.ok_or(VoucherError::BadKey)?;
    let prefix = keys::display_prefix(key).ok_or(VoucherError::BadKey)?;
    let presented = keys::hash(key);
    let generation = revocation::current();
    let found = find_candidates(prefix)
        .into_iter()
        .find(|c| keys::matches(&presented, &c.hash))
        .ok_or(VoucherError::BadKey)?;
    if !found.usable {
        // while its source is locked out, a flood of refused keys is summed up, not a row each
        if !auth_guard::source_locked() {
            refused_key(found.tenant, Some(found.key_id), "revoked or expired");
        }
        return Err(VoucherError::BadKey);
    }
    let role = KeyRole::parse(&found.role)?;
    let scope = if session {
        Scope::Session
    } else {
        Scope::Transaction
    };
    let state = KeyState {
        role,
        expires_at: found.expires_at,
        generation,
    };
    install(
        found.tenant,
        Some(found.key_id),
        role,
        None,
        scope,
        Some(&state),
    );
    if found.touch_due {
        touch_last_used(found.tenant, found.key_id);
    }
    events::flush_pending();
    Ok(pgrx::Uuid::from_bytes(found.tenant))
}

/// Verifies an API key and opens its tenant context for this transaction (or the session).
#[pg_extern(volatile, parallel_unsafe)]
fn authenticate(api_key: Option<&str>, session: default!(Option<bool>, false)) -> pgrx::Uuid {
    // bad keys count per source address; past the threshold they get VC012 instead of 28000
    api(|| {
        let session = session.ok_or(VoucherError::NullArgument("session"))?;
        match authenticate_impl(api_key, session) {
            Err(VoucherError::BadKey) => Err(auth_guard::bad_key()),
            other => other,
        }
    })
}

/// Clears the tenant context of this session.
#[pg_extern(volatile, parallel_unsafe)]
fn logout() {
    clear();
}

fn act_as_impl(
    tenant: Option<pgrx::Uuid>,
    role: Option<&str>,
    session: Option<bool>,
) -> Result<()> {
    let operator = require_operator("act as a tenant")?;
    let session = session.ok_or(VoucherError::NullArgument("session"))?;
    let tenant = uuid_bytes(&tenant.ok_or(VoucherError::NullArgument("tenant"))?);
    let role = KeyRole::parse(role.ok_or(VoucherError::NullArgument("role"))?)?;
    if !tenant_exists(tenant) {
        return Err(VoucherError::invalid("no such tenant"));
    }
    let scope = if session {
        Scope::Session
    } else {
        Scope::Transaction
    };
    install(tenant, None, role, Some(operator), scope, None);
    // acting as a tenant is recorded even if the transaction rolls back
    events::record_durably(Event {
        tenant,
        actor: actor_json(current().as_ref()),
        action: "act_as",
        object_type: Some("tenant"),
        object_id: Some(pgrx::Uuid::from_bytes(tenant).to_string()),
        details: serde_json::json!({ "role": role.as_str(), "session": session }),
        at: Some(unsafe { pg_sys::GetCurrentTimestamp() }),
    });
    events::flush_pending();
    Ok(())
}

/// Operators and superusers: act as `tenant` with key role `role`.
#[pg_extern(volatile, parallel_unsafe)]
fn act_as(
    tenant: Option<pgrx::Uuid>,
    role: default!(Option<&str>, "'admin'"),
    session: default!(Option<bool>, false),
) {
    api(|| act_as_impl(tenant, role, session))
}
