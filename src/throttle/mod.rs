//! Brute-force protection (../shared/API.md, "Brute-force protection").
//!
//! Counts the failures that tell a guesser something, a code that matches no voucher (`VC001`)
//! and a bad API key, per identity: the customer and the client a call names, the API key for
//! calls naming neither, the source address for `authenticate`. Past a tenant's threshold within
//! its window, the identity is locked out (`VC012`) for a period that doubles with each repeated
//! lock-out, up to a maximum.
//!
//! Exports, for validate/redeem: [`Guard`] (`check` before the look-up, `failed` after a VC001);
//! for authenticate: [`auth_locked`] and [`auth_failed`]. SQL: `voucher.unlock`,
//! `voucher.lockout_fingerprint`, and `voucher._lockouts()` behind the view `voucher.lockouts`.
//!
//! `counter.rs` is the counting (plain Rust), `table.rs` the memory it lives in, `report.rs` the
//! audit events and the hint's times.

pub mod counter;
mod report;
mod table;

use pgrx::prelude::*;

use crate::audit;
use crate::common::auth_guard::{self, AuthGuard};
use crate::common::error::{api, Result, VoucherError};
use crate::common::gucs;
use crate::settings;
use crate::tenancy::context::{self, Context};
use crate::tenancy::definer;
use crate::tenancy::roles::Action;
use counter::{Failure, Kind, Micros, Policy, SECOND};
use table::Identity;

/// From `_PG_init`: the shared counter table, when preloaded.
pub fn init() {
    table::init();
    auth_guard::install(AuthGuard {
        locked: auth_locked,
        failed: auth_failed,
    });
}

/// Longest client identity.
const MAX_CLIENT: usize = 200;

fn now() -> Micros {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The keyed hash of an identity: what the table stores instead of it.
fn identity(kind: Kind, tenant: [u8; 16], text: &[u8]) -> Result<Identity> {
    let d = audit::key::keyed_digest(
        "voucher_ext throttle identity",
        &[&[kind as u8], &tenant, text],
    )?;
    let mut key: [u8; 16] = d[..16].try_into().expect("16 bytes");
    if key == [0; 16] {
        key[0] = 1; // all zero marks an empty slot
    }
    Ok(Identity { kind, tenant, key })
}

/// The short, non-reversible name of an identity in audit rows and the lockouts view.
pub fn fingerprint(key: &[u8; 16]) -> String {
    key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies the caller of an anonymous call: its key, or the operator acting as tenant.
fn key_identity(ctx: &Context) -> String {
    match ctx.key_id {
        Some(k) => pgrx::Uuid::from_bytes(k).to_string(),
        None => context::actor_label(ctx),
    }
}

fn seconds(text: &str) -> Micros {
    settings::registry::parse_duration(text).unwrap_or(60) * SECOND
}

/// The tenant's policy for `kind`, or None when protection is off.
fn policy(tenant: [u8; 16], kind: Kind) -> Option<Policy> {
    let prefix = kind.as_str();
    let [on, threshold, window, period, max] = settings::get_many(
        tenant,
        [
            "brute_force_protection",
            &format!("{prefix}_lockout_threshold"),
            &format!("{prefix}_lockout_window"),
            &format!("{prefix}_lockout_period"),
            "lockout_max_period",
        ],
    );
    (on == "true").then(|| Policy {
        threshold: threshold.parse().unwrap_or(10),
        window: seconds(&window),
        period: seconds(&period),
        max_period: seconds(&max),
    })
}

fn enabled(tenant: [u8; 16]) -> bool {
    settings::get(tenant, "brute_force_protection") == "true"
}

fn auth_policy() -> Policy {
    Policy {
        threshold: gucs::AUTH_FAILURE_THRESHOLD.get().max(1) as u32,
        window: gucs::AUTH_FAILURE_WINDOW.get().max(1) as i64 * SECOND,
        period: gucs::AUTH_LOCKOUT.get().max(1) as i64 * SECOND,
        max_period: 3600 * SECOND,
    }
}

/// Reports lock-outs that ended, table-wide, once their latest end has passed.
fn sweep_if_due(now: Micros) {
    if table::claim_sweep(now) {
        for e in table::sweep(now) {
            report::ended(&e, "expired", None);
        }
    }
}

fn locked_error(kind: Kind, until: Micros, now: Micros) -> VoucherError {
    VoucherError::rule_with_hint(
        "VC012",
        format!(
            "this {} made too many failed attempts",
            match kind {
                Kind::Key => "API key (in calls naming neither customer nor client)",
                Kind::Address => "source address",
                k => k.as_str(),
            }
        ),
        report::retry_hint(until, now),
    )
}

/// The identities one validate or redeem call is counted under.
pub struct Guard {
    tenant: [u8; 16],
    ids: Vec<(Kind, String)>,
}

impl Guard {
    /// Checks the `client` argument (22023) and names the call's identities.
    pub fn new(ctx: &Context, customer: Option<&str>, client: Option<&str>) -> Result<Guard> {
        let mut ids = Vec::with_capacity(2);
        if let Some(c) = customer {
            ids.push((Kind::Customer, c.to_string()));
        }
        if let Some(c) = client {
            if c.trim().is_empty() {
                return Err(VoucherError::invalid("client must not be empty"));
            }
            if c.chars().count() > MAX_CLIENT {
                return Err(VoucherError::invalid(format!(
                    "client is longer than {MAX_CLIENT} characters"
                )));
            }
            ids.push((Kind::Client, c.to_string()));
        }
        if ids.is_empty() {
            ids.push((Kind::Key, key_identity(ctx)));
        }
        Ok(Guard {
            tenant: ctx.tenant,
            ids,
        })
    }

    /// `VC012` if one of the identities is locked out. When nothing is locked out anywhere this
    /// is one atomic read: no hashing, no lock, no query.
    pub fn check(&self) -> Result<()> {
        let now = now();
        sweep_if_due(now);
        if !table::anything_locked(now) || !enabled(self.tenant) {
            return Ok(());
        }
        for (kind, text) in &self.ids {
            let id = identity(*kind, self.tenant, text.as_bytes())?;
            match table::check(&id, now) {
                table::Checked::Locked(until) => return Err(locked_error(*kind, until, now)),
                table::Checked::Ended(e) => report::ended(&e, "expired", None),
                table::Checked::Clear => {}
            }
        }
        Ok(())
    }

    /// Counts a failed look-up (VC001) against every identity of the call.
    pub fn failed(&self, ctx: &Context) -> Result<()> {
        let now = now();
        for (kind, text) in &self.ids {
            let Some(policy) = policy(self.tenant, *kind) else {
                return Ok(());
            };
            let id = identity(*kind, self.tenant, text.as_bytes())?;
            let (failure, ended) = table::fail(&id, now, &policy);
            if let Some(e) = ended {
                let why = if e.key == id.key {
                    "expired"
                } else {
                    "evicted"
                };
                report::ended(&e, why, None);
            }
            if let Failure::LockedNow { until, failures } = failure {
                report::locked(&id, ctx, until, failures, &policy, now);
            }
        }
        sweep_if_due(now);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// authenticate: per source address
// ---------------------------------------------------------------------------------------------

/// The connection's source: its IP address (`inet_client_addr()`), or for a Unix socket the
/// session's database role.
fn source() -> Vec<u8> {
    // SAFETY: inet_client_addr takes no arguments and returns NULL without a TCP connection;
    // network_host takes the inet it returned.
    unsafe {
        let addr = pgrx::direct_function_call_as_datum(pg_sys::inet_client_addr, &[]);
        if let Some(host) = addr
            .and_then(|a| pgrx::direct_function_call::<String>(pg_sys::network_host, &[Some(a)]))
        {
            return source_text(&host);
        }
        source_text(&definer::role_name(pg_sys::GetSessionUserId()))
    }
}

/// An address as an admin types it (`10.1.2.3`, `::1`), or a database role name.
fn source_text(text: &str) -> Vec<u8> {
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => format!("ip:{ip}").into_bytes(),
        Err(_) => format!("role:{text}").into_bytes(),
    }
}

fn source_identity() -> Result<Identity> {
    identity(Kind::Address, [0; 16], &source())
}

/// Is this connection's source locked out of authenticate? Reads only; cheap when nothing is
/// locked out anywhere.
pub fn auth_locked() -> bool {
    let now = now();
    if !table::anything_locked(now) {
        return false;
    }
    let Ok(id) = source_identity() else {
        return false;
    };
    table::peek(&id, now).is_some()
}

/// A bad key was presented: count it; VC012 instead of 28000 once past the threshold.
pub fn auth_failed() -> VoucherError {
    let now = now();
    let Ok(id) = source_identity() else {
        return VoucherError::BadKey;
    };
    let (failure, ended) = table::fail(&id, now, &auth_policy());
    if let Some(e) = ended {
        report::ended(
            &e,
            if e.key == id.key {
                "expired"
            } else {
                "evicted"
            },
            None,
        );
    }
    sweep_if_due(now);
    match failure {
        Failure::Counted(_) => VoucherError::BadKey,
        Failure::LockedNow { until, failures } => {
            report::address_locked(&id, until, failures);
            VoucherError::BadKey
        }
        Failure::WhileLocked(until) => locked_error(Kind::Address, until, now),
    }
}

// ---------------------------------------------------------------------------------------------
// SQL: unlock, fingerprints, the lockouts view
// ---------------------------------------------------------------------------------------------

/// The identity an admin names: (kind, hashed identity).
fn named(kind: Option<&str>, ident: Option<&str>, tenant: [u8; 16]) -> Result<Identity> {
    let kind_text = kind.ok_or(VoucherError::NullArgument("kind"))?;
    let text = ident.ok_or(VoucherError::NullArgument("identity"))?;
    let kind = Kind::parse(kind_text).ok_or_else(|| {
        VoucherError::invalid_hint(
            format!("unknown lock-out kind \"{}\"", kind_text.escape_default()),
            "kinds are customer, client, key and address",
        )
    })?;
    match kind {
        Kind::Address => identity(kind, [0; 16], &source_text(text.trim())),
        Kind::Key => {
            let canonical = canonical_uuid(text).unwrap_or_else(|| text.to_string());
            identity(kind, tenant, canonical.as_bytes())
        }
        _ => identity(kind, tenant, text.as_bytes()),
    }
}

/// A uuid in its canonical text (lower case, hyphenated), if `text` is one.
fn canonical_uuid(text: &str) -> Option<String> {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn tenant_or_operator(kind: Option<&str>) -> Result<(Option<Context>, [u8; 16])> {
    if kind == Some("address") {
        context::require_operator("lift or look up a source address lock-out")?;
        return Ok((context::current(), [0; 16]));
    }
    let ctx = context::authorize(Action::Administer)?;
    let tenant = ctx.tenant;
    Ok((Some(ctx), tenant))
}

fn unlock_impl(kind: Option<&str>, ident: Option<&str>) -> Result<bool> {
    let (ctx, tenant) = tenant_or_operator(kind)?;
    let id = named(kind, ident, tenant)?;
    let now = now();
    match table::unlock(&id, now) {
        Some((true, ended)) => {
            table::recompute_horizon(now);
            report::ended(&ended, "unlocked", ctx.as_ref());
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Admin keys: lifts the lock-out of one identity (given in plaintext, hashed to find it) and
/// forgets its failures. True if it was locked out. `address` lock-outs: operators only.
#[pg_extern(volatile, parallel_unsafe)]
fn unlock(kind: Option<&str>, identity: Option<&str>) -> bool {
    api(|| unlock_impl(kind, identity))
}

/// Admin keys: the fingerprint an identity has in voucher.lockouts and in audit rows.
#[pg_extern(volatile, parallel_unsafe)]
fn lockout_fingerprint(kind: Option<&str>, identity: Option<&str>) -> String {
    api(|| {
        let (_, tenant) = tenant_or_operator(kind)?;
        Ok(fingerprint(&named(kind, identity, tenant)?.key))
    })
}

/// kind, fingerprint, failures, refused, lockouts, locked_at, locked_until
type LockoutRow = (
    String,
    String,
    i64,
    i64,
    i64,
    TimestampWithTimeZone,
    TimestampWithTimeZone,
);

fn lockouts_impl() -> Result<Vec<LockoutRow>> {
    let tenant = match context::current() {
        Some(_) => Some(context::authorize(Action::Administer)?.tenant),
        None => None,
    };
    let operator = definer::is_operator(definer::caller());
    let now = now();
    // reading the view reports every lock-out that ended meanwhile
    for e in table::sweep(now) {
        report::ended(&e, "expired", None);
    }
    let ts = |m: Micros| {
        TimestampWithTimeZone::try_from(m)
            .unwrap_or_else(|_| TimestampWithTimeZone::negative_infinity())
    };
    let mut rows: Vec<LockoutRow> = table::list(|s| {
        s.locked(now).is_some()
            && ((Some(s.tenant) == tenant && s.kind != Kind::Address as u8)
                || (operator && s.kind == Kind::Address as u8))
    })
    .into_iter()
    .map(|s| {
        (
            Kind::from_u8(s.kind).map_or("?", Kind::as_str).to_string(),
            fingerprint(&s.key),
            s.failures as i64,
            s.refused as i64,
            s.strikes as i64,
            ts(s.locked_at),
            ts(s.locked_until),
        )
    })
    .collect();
    rows.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
    Ok(rows)
}

/// Internal, for the view voucher.lockouts: the current lock-outs of the context's tenant
/// (admin keys), and of source addresses (operators).
#[pg_extern(volatile, parallel_unsafe, name = "_lockouts")]
#[allow(clippy::type_complexity)]
fn lockouts_sql() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(fingerprint, String),
        name!(failures, i64),
        name!(refused, i64),
        name!(lockouts, i64),
        name!(locked_at, TimestampWithTimeZone),
        name!(locked_until, TimestampWithTimeZone),
    ),
> {
    TableIterator::new(api(lockouts_impl))
}

/// Internal: how big the counter table is, whether it is in shared memory, and until when the
/// successful path looks identities up (NULL: it does not).
#[pg_extern(volatile, parallel_safe, name = "_throttle_capacity")]
fn capacity_sql() -> TableIterator<
    'static,
    (
        name!(entries, i64),
        name!(shared, bool),
        name!(lookups_until, Option<TimestampWithTimeZone>),
    ),
> {
    let (n, shared, horizon) = table::capacity();
    let until = (horizon > 0)
        .then(|| TimestampWithTimeZone::try_from(horizon).ok())
        .flatten();
    TableIterator::once((n as i64, shared, until))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Without shared_preload_libraries the counters live in the backend: a smaller table, the
    /// same lock-outs.
    #[pg_test]
    fn without_preloading_counters_are_backend_local() {
        assert_eq!(
            Spi::get_two::<i64, bool>("SELECT entries, shared FROM voucher._throttle_capacity()"),
            Ok((Some(4096), Some(false)))
        );
        Spi::run(
            "SELECT voucher.authenticate(voucher.create_api_key('admin', \
                    tenant => voucher.create_tenant('local counters')), session => true)",
        )
        .unwrap();
        Spi::run("SELECT voucher.configure('customer_lockout_threshold', '2')").unwrap();
        let state = |code: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT sqlstate FROM voucher.validate('{code}', customer => 'm')"
            ))
        };
        assert_eq!(state("X1"), Ok(Some("VC001".into())));
        assert_eq!(state("X2"), Ok(Some("VC001".into())));
        assert_eq!(state("X3"), Ok(Some("VC012".into())));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM voucher.lockouts WHERE kind = 'customer'"),
            Ok(Some(1))
        );
        let lookups = || {
            Spi::get_one::<bool>(
                "SELECT lookups_until IS NOT NULL FROM voucher._throttle_capacity()",
            )
        };
        assert_eq!(lookups(), Ok(Some(true)));
        assert_eq!(
            Spi::get_one::<bool>("SELECT voucher.unlock('customer', 'm')"),
            Ok(Some(true))
        );
        // the last lock-out lifted: the successful path is back to one atomic read
        assert_eq!(lookups(), Ok(Some(false)));
        assert_eq!(state("X4"), Ok(Some("VC001".into())));
    }
}
