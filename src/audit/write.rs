//! Writing audit rows in the transaction of the change they record.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;

use crate::common::error::{api, VoucherError};
use crate::common::events::Event;
use crate::tenancy::context::{self, actor_json};

/// The SQL of one insert. The row hash is computed over the jsonb exactly as stored.
/// $1 tenant, $2 at (NULL: now()), $3 actor, $4 action, $5 object type, $6 object id, $7 details
pub const INSERT: &str = "\
WITH e AS (SELECT nextval('voucher.audit_event_id_seq') AS id, coalesce($2, now()) AS at,
                  $3::jsonb AS actor, $7::jsonb AS details)
INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, object_id,
                                 details, row_hash)
SELECT $1, e.id, e.at, e.actor, $4, $5, $6, e.details,
       voucher._audit_hash($1, e.id, e.at, e.actor::text, $4, $5, $6, e.details::text)
  FROM e";

/// Event ids come from a sequence; the sealing horizon assumes a writer has its transaction id
/// before it takes one (see `seal`).
pub fn take_xid() {
    crate::scale::standby::assert_writable("write the audit log");
    // SAFETY: assigns (or returns) the top-level transaction id.
    unsafe { pg_sys::GetTopTransactionId() };
}

thread_local! {
    /// voucher.audit_event_id_seq's oid, looked up once per backend; forgotten by a relcache
    /// invalidation of the sequence (a rename, a DROP, DROP EXTENSION) or of every relation.
    static EVENT_SEQ: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
    static EVENT_SEQ_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe extern "C-unwind" fn forget_event_seq(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    EVENT_SEQ.with(|s| {
        if relid == pg_sys::InvalidOid || s.get() == Some(relid) {
            s.set(None);
        }
    });
}

/// The sequence of event ids, by name: two syscache look-ups the first time in a backend, none
/// after (an invalidation of the sequence sends the next call to the catalog again, so a renamed
/// sequence is missed exactly as an uncached look-up would miss it).
fn event_seq() -> pg_sys::Oid {
    if let Some(oid) = EVENT_SEQ.with(std::cell::Cell::get) {
        return oid;
    }
    if !EVENT_SEQ_CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a plain function, once per backend.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(forget_event_seq), pg_sys::Datum::from(0))
        };
    }
    // SAFETY: catalog look-ups; a missing schema raises a normal ERROR, a missing sequence
    // gives InvalidOid (then nextval raises, and nothing is cached).
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"voucher".as_ptr(), false);
        let seq = pg_sys::get_relname_relid(c"audit_event_id_seq".as_ptr(), ns);
        if seq != pg_sys::InvalidOid {
            EVENT_SEQ.with(|s| s.set(Some(seq)));
        }
        seq
    }
}

/// The next event id, taken after the transaction id ([`take_xid`]): for a writer whose own
/// statement inserts the row and needs the id twice (column and row hash) without a subquery.
pub fn take_event_id() -> i64 {
    take_xid();
    // SAFETY: the function SQL's nextval(regclass) runs, which checks the current user's
    // privileges on the sequence and raises a normal ERROR if it is missing.
    unsafe {
        pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[event_seq().into_datum()])
            .expect("nextval returns a value")
    }
}

thread_local! {
    /// jsonb text -> `::jsonb::text` of it, for [`jsonb_text`].
    static JSONB_TEXT: std::cell::RefCell<std::collections::HashMap<String, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `value::jsonb::text`, what the row hash covers for a jsonb column, for a writer that hashes a
/// value it passes as text: computed by PostgreSQL once per distinct value and backend (actors
/// repeat: one per API key).
pub fn jsonb_text(client: &SpiClient<'_>, value: &str) -> String {
    if let Some(t) = JSONB_TEXT.with(|c| c.borrow().get(value).cloned()) {
        return t;
    }
    let t = client
        .select("SELECT $1::jsonb::text", None, &[value.into()])
        .expect("jsonb text")
        .first()
        .get_one::<String>()
        .ok()
        .flatten()
        .expect("a jsonb value has a text");
    JSONB_TEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(value.to_string(), t.clone());
    });
    t
}

pub fn insert(client: &mut SpiClient<'_>, e: &Event) {
    take_xid();
    let at = e.at.and_then(|t| TimestampWithTimeZone::try_from(t).ok());
    let args: [DatumWithOid; 7] = [
        pgrx::Uuid::from_bytes(e.tenant).into(),
        at.into(),
        e.actor.to_string().into(),
        e.action.into(),
        e.object_type.into(),
        e.object_id.clone().into(),
        e.details.to_string().into(),
    ];
    if crate::scale::cluster::active() {
        // scale: Citus runs an INSERT ... SELECT as a COPY, which row-level security refuses
        crate::scale::cluster::insert_audit(client, args);
        return;
    }
    client.update(INSERT, None, &args).expect("audit insert");
}

/// Records `e` in the current transaction.
pub fn write(e: &Event) {
    context::as_tenant_definer(e.tenant, || Spi::connect_mut(|client| insert(client, e)));
}

/// Internal, for SQL functions: records an event of the current tenant context.
#[pg_extern(volatile, parallel_unsafe, name = "_audit")]
fn audit_sql(
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: Option<JsonB>,
) {
    api(|| {
        let ctx = context::current().ok_or_else(|| {
            VoucherError::forbidden_hint(
                "no tenant context",
                "call voucher.authenticate(api_key) first",
            )
        })?;
        write_from_sql(
            ctx.tenant,
            actor_json(Some(&ctx)),
            action,
            object_type,
            object_id,
            details,
        );
        Ok(())
    })
}

/// Internal, for the triggers on direct DML: records an event of `tenant` by the database role.
#[pg_extern(volatile, parallel_unsafe, name = "_audit_direct")]
fn audit_direct_sql(
    tenant: pgrx::Uuid,
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: Option<JsonB>,
) {
    // scale: on a Citus worker this trigger fires on a shard, inside a statement another node
    // sent; the audit log cannot be written from there (README "Scaling out")
    if crate::scale::cluster::on_shard() {
        crate::common::error::api(|| Err::<(), _>(crate::scale::cluster::direct_dml_refused()))
    }
    write_from_sql(
        *tenant,
        actor_json(None),
        action,
        object_type,
        object_id,
        details,
    );
}

/// Writes an event whose fields arrive as SQL arguments (details NULL: an empty object).
fn write_from_sql(
    tenant: [u8; 16],
    actor: serde_json::Value,
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: Option<JsonB>,
) {
    write(&Event {
        tenant,
        actor,
        action: static_str(action),
        object_type: object_type.map(static_str),
        object_id: object_id.map(str::to_string),
        details: details
            .map(|d| d.0)
            .unwrap_or_else(|| serde_json::json!({})),
        at: None,
    });
}

/// Action and object-type names are few and fixed; SQL passes them as text.
fn static_str(s: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "tenant.created",
        "tenant.audit_retention_changed",
        "key.created",
        "key.revoked",
        "key.refused",
        "act_as",
        "campaign.created",
        "campaign.enabled",
        "campaign.disabled",
        "voucher.created",
        "voucher.enabled",
        "voucher.disabled",
        "codes.generated",
        "customer.created",
        "customer.updated",
        "redemption.created",
        "redemption.failed",
        "redemption.rolled_back",
        "audit.purged",
        // privacy (sql/privacy.sql)
        "consent.granted",
        "consent.withdrawn",
        "customer.exported",
        "customer.forgotten",
        "consent",
        "direct.update",
        "direct.delete",
        "direct.truncate",
        "tenant",
        "key",
        "campaign",
        "voucher",
        "customer",
        "redemption",
        "credential",
        "code",
        "code_use", // perf (a hot voucher's slot rows)
        "customer_usage",
        "tenant_setting",
        "tenant_key",
        "audit",
    ];
    NAMES.iter().find(|n| **n == s).copied().unwrap_or_else(|| {
        VoucherError::invalid(format!("unknown audit name \"{}\"", s.escape_default())).raise()
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The sequence's oid is cached per backend: a sequence renamed away and another created
    /// under its name (what DROP and CREATE EXTENSION do in one backend) is the one used next.
    #[pg_test]
    fn the_event_id_sequence_is_found_again_after_it_is_re_created() {
        let first = super::take_event_id();
        let second = super::take_event_id();
        // (not first + 1: other tests' backends take ids concurrently)
        assert!(second > first);
        Spi::run("ALTER SEQUENCE voucher.audit_event_id_seq RENAME TO audit_event_id_seq_old")
            .unwrap();
        // Other tests' backends may have taken ids since `second` (they run concurrently); from
        // here on the rename's lock keeps them off the old sequence until this test ends.
        let old = || Spi::get_one::<i64>("SELECT last_value FROM voucher.audit_event_id_seq_old");
        let renamed = old();
        Spi::run("CREATE SEQUENCE voucher.audit_event_id_seq START 1000000000").unwrap();
        assert_eq!(super::take_event_id(), 1_000_000_000);
        assert_eq!(super::take_event_id(), 1_000_000_001);
        // the old one, renamed, was not used again
        assert_eq!(old(), renamed);
    }
}
