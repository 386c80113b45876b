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
    /// jsonb text -> that value parsed once (a jsonb datum kept in TopMemoryContext for the
    /// backend's life; never freed: a statement may be running with it) and its `::jsonb::text`,
    /// for [`jsonb_datum`] and [`jsonb_text`].
    static JSONB_KEPT: std::cell::RefCell<std::collections::HashMap<String, (pg_sys::Datum, String)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Distinct values kept (actors: one per API key and role the backend acts with); past that a
/// value is parsed per call.
const JSONB_DATUMS: usize = 64;

/// `value::jsonb` (in the current memory context) and its text, as `jsonb_in` and `jsonb_out`
/// make them.
fn parse_jsonb(value: &str) -> (pg_sys::Datum, String) {
    let text = std::ffi::CString::new(value).expect("json text has no NUL");
    // SAFETY: jsonb_in reads a NUL-terminated string and returns a palloc'd jsonb in the current
    // memory context; jsonb_out prints it to a palloc'd NUL-terminated string.
    unsafe {
        let datum = pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(text.as_ptr()))],
        )
        .expect("jsonb_in returns a value");
        let out = pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(datum)])
            .expect("jsonb_out returns a value");
        let printed = std::ffi::CStr::from_ptr(out.cast_mut_ptr::<std::ffi::c_char>())
            .to_str()
            .expect("jsonb prints UTF-8")
            .to_string();
        (datum, printed)
    }
}

/// `value::jsonb` and `value::jsonb::text`, parsed once per distinct value and backend.
/// `value` must be valid json (the writers' own serde output).
pub fn jsonb_kept(value: &str) -> (pg_sys::Datum, String) {
    JSONB_KEPT.with(|c| {
        if let Some(k) = c.borrow().get(value) {
            return k.clone();
        }
        // parsed here (its work memory goes with the call)
        let (parsed, printed) = parse_jsonb(value);
        if c.borrow().len() >= JSONB_DATUMS {
            return (parsed, printed);
        }
        // SAFETY: jsonb_in returns a plain (untoasted, 4-byte header) varlena of varsize_any
        // bytes; the copy is allocated in TopMemoryContext.
        let kept = unsafe {
            let from = parsed.cast_mut_ptr::<pg_sys::varlena>();
            let len = pgrx::varlena::varsize_any(from);
            let to = pg_sys::MemoryContextAlloc(pg_sys::TopMemoryContext, len);
            std::ptr::copy_nonoverlapping(from.cast::<u8>(), to.cast::<u8>(), len);
            pg_sys::Datum::from(to)
        };
        c.borrow_mut()
            .insert(value.to_string(), (kept, printed.clone()));
        (kept, printed)
    })
}

/// `value::jsonb::text`, what the row hash covers for a jsonb column, for a writer that hashes a
/// value it passes as text (actors repeat: one per API key).
pub fn jsonb_text(value: &str) -> String {
    jsonb_kept(value).1
}

/// `value::jsonb` as a parameter of type jsonb: a writer that stores the same actor in every
/// audit row passes it parsed instead of paying `jsonb_in` per statement (about 2 % of
/// `upsert_customer`, callgrind, issue 14).
pub fn jsonb_datum(value: &str) -> DatumWithOid<'static> {
    let datum = jsonb_kept(value).0;
    // SAFETY: a jsonb datum, live for the backend (kept) or for the calling statement (parsed
    // in the caller's memory context).
    unsafe { DatumWithOid::new(datum, pg_sys::JSONBOID) }
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

    /// `jsonb_datum` is `value::jsonb`: kept once per value (the same datum on the next call),
    /// equal to what SQL parses, and still right past the values it keeps.
    #[pg_test]
    fn a_jsonb_datum_is_the_value_parsed_once() {
        let value = r#"{"type": "key", "role": "admin", "key_id": "0b1e"}"#;
        let same = |text: &str| -> bool {
            Spi::connect(|c| {
                c.select(
                    "SELECT $1 = $2::jsonb AND $1::text = $2::jsonb::text",
                    None,
                    &[super::jsonb_datum(text), text.into()],
                )
                .unwrap()
                .first()
                .get_one::<bool>()
                .unwrap()
                .unwrap()
            })
        };
        assert!(same(value));
        // and its text is what SQL prints
        let printed = |text: &str| {
            Spi::get_one_with_args::<String>("SELECT $1::jsonb::text", &[text.into()])
                .unwrap()
                .unwrap()
        };
        assert_eq!(super::jsonb_text(value), printed(value));
        let datum = |text: &str| super::jsonb_datum(text).datum().unwrap().sans_lifetime();
        assert_eq!(datum(value), datum(value), "kept: the same datum again");
        for n in 0..super::JSONB_DATUMS + 10 {
            let v = format!(r#"{{"n": {n}, "s": "x\u00e9"}}"#);
            assert!(same(&v), "{v}");
            assert_eq!(super::jsonb_text(&v), printed(&v));
        }
        assert!(same(value));
    }
}
