//! Customers with their personal fields encrypted: `upsert_customer`, `find_customer`, the
//! look-up by source_id that redemptions use (a blind index, no decryption), the decryption
//! behind the `customers` and `redemptions` views, and the per-customer key under which a
//! customer's personal data in audit rows is encrypted (destroying it forgets them).

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;

use super::envelope::{EnvelopeError, Key};
use super::keyring;
use super::store::{self, Place};
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::{self, Event};
use crate::common::rng;
use crate::redeem::direct::NewCustomer;
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::{Action, KeyRole};

type Tenant = [u8; 16];

/// A fresh key for this customer's personal data in audit rows, wrapped under the data key its
/// row is encrypted with (`key_id`, one of the encryptions reserved for the row). Stored in the
/// row itself (voucher.customer.audit_key).
pub(super) fn new_customer_key(key_id: i32, dk: &Key, tenant: &Tenant, customer: &str) -> Vec<u8> {
    let material = keyring::random_key();
    keyring::wrap_customer_key(dk, key_id, tenant, customer, &material)
}

/// Where a customer's own key is stored.
fn audit_key_place(customer: &str) -> Place<'_> {
    Place {
        table: "customer",
        column: "audit_key",
        row: customer,
    }
}

/// Opens a customer's wrapped audit key with whichever data key it names.
pub(super) fn open_customer_key(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    customer: &str,
    wrapped: &[u8],
) -> Result<Key> {
    let place = audit_key_place(customer);
    let key_id = super::envelope::key_id(wrapped).map_err(|e| place.failed(&e))?;
    let key_id = i32::try_from(key_id).map_err(|_| place.failed(&EnvelopeError::Authentication))?;
    let dk = match store::data_key(client, tenant, key_id) {
        Ok(k) => k,
        Err(VoucherError::Corrupted { .. }) => {
            return Err(place.failed(&EnvelopeError::Authentication))
        }
        Err(e) => return Err(e),
    };
    keyring::unwrap_customer_key(&dk, tenant, customer, wrapped).map_err(|e| place.failed(&e))
}

/// The customer's audit key, or None when it was destroyed (the customer was forgotten).
/// Also what privacy opens and destroys personal data in audit rows with.
pub fn customer_key(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    customer: pgrx::Uuid,
) -> Result<Option<Key>> {
    let wrapped = store::kept(
        client,
        "SELECT audit_key FROM voucher.customer WHERE tenant_id = $1 AND customer_id = $2",
        &[pg_sys::UUIDOID, pg_sys::UUIDOID],
        &[store::uuid(tenant).into(), customer.into()],
    )
    .first()
    .get_one::<Vec<u8>>()
    .ok()
    .flatten();
    let Some(wrapped) = wrapped else {
        return Ok(None);
    };
    open_customer_key(client, tenant, &customer.to_string(), &wrapped).map(Some)
}

/// Personal data for an audit row of `customer`: `{"customer_id": ..., "personal": "<hex>"}`,
/// the JSON `personal` encrypted under the customer's key, bound to the tenant and customer.
/// Written before the row is hashed, so the row keeps verifying once the key is destroyed.
pub fn seal_for_audit(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    customer: pgrx::Uuid,
    personal: &serde_json::Value,
) -> Result<serde_json::Value> {
    let Some(key) = customer_key(client, tenant, customer)? else {
        return Ok(serde_json::json!({ "customer_id": customer.to_string() }));
    };
    let cust = customer.to_string();
    let ct = keyring::seal_audit_personal(&key, tenant, &cust, personal.to_string().as_bytes());
    Ok(serde_json::json!({ "customer_id": cust, "personal": keyring::hex(&ct) }))
}

/// The customer with this source_id: its id, and whether this call created it. Redemptions call
/// it: one index probe on the blind index, no decryption; creation encrypts the source_id.
/// `index`: the blind index of `source_id` if the caller computed it already
/// (`store::source_index`), else None. `likely_new`: the caller's look-up did not find it, so
/// the INSERT comes first (its conflict, a customer made meanwhile, falls back to the look-up).
pub fn find_or_create(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    source_id: &str,
    index: Option<Vec<u8>>,
    likely_new: bool,
) -> Result<(pgrx::Uuid, bool)> {
    let index = match index {
        Some(i) => i,
        None => store::source_index(client, tenant, source_id)?,
    };
    let find = |client: &SpiClient<'_>, index: &Vec<u8>| {
        // by the index and a row lock, without the statement, where that holds (redeem's lookup)
        if let Ok(found) = crate::redeem::lookup::lock_customer(store::uuid(tenant), index) {
            return found;
        }
        store::kept(
            client,
            // FOR KEY SHARE (privacy): a forget_customer in progress makes this wait, and the
            // forgotten row, its blind index replaced, then no longer matches
            "SELECT customer_id FROM voucher.customer WHERE tenant_id = $1 AND source_index = $2 \
             FOR KEY SHARE",
            &[pgrx::Uuid::type_oid(), pg_sys::BYTEAOID],
            &[store::uuid(tenant).into(), index.clone().into()],
        )
        .first()
        .get_one::<pgrx::Uuid>()
        .ok()
        .flatten()
    };
    if !likely_new {
        if let Some(id) = find(client, &index) {
            return Ok((id, false));
        }
    }
    let id = pgrx::Uuid::from_bytes(rng::uuid_v7());
    let row = crate::common::uuid_text(id.as_bytes());
    // two encryptions: the source_id and the customer's own key
    let (key_id, key) = store::reserve_for(client, tenant, 2)?;
    let ct = store::seal_with(
        key_id,
        &key,
        tenant,
        Place {
            table: "customer",
            column: "source_id",
            row: &row,
        },
        source_id.as_bytes(),
    );
    let audit_key = new_customer_key(key_id, &key, tenant, &row);
    let new = NewCustomer {
        id,
        source_index: &index,
        email_index: None,
        key_id,
        source_id: &ct,
        email: None,
        name: None,
        metadata: None,
        audit_key: &audit_key,
    };
    if !insert_customer(client, tenant, &new) {
        let id = find(client, &index).expect("the customer exists now");
        return Ok((id, false));
    }
    Ok((id, true))
}

/// Inserts `c` unless a customer with its source_id exists ([`INSERT_CUSTOMER`]): without the
/// statement where `redeem::direct::create_customer` may. True: inserted.
fn insert_customer(client: &SpiClient<'_>, tenant: &Tenant, c: &NewCustomer<'_>) -> bool {
    if let Some(made) = crate::redeem::direct::create_customer(store::uuid(tenant), c) {
        return made;
    }
    !store::kept(
        client,
        INSERT_CUSTOMER,
        &INSERT_TYPES,
        &insert_args(tenant, c),
    )
    .is_empty()
}

/// [`INSERT_CUSTOMER`]'s parameters for `c`.
fn insert_args<'a>(tenant: &Tenant, c: &NewCustomer<'a>) -> Vec<DatumWithOid<'a>> {
    vec![
        store::uuid(tenant).into(),
        c.id.into(),
        c.source_index.into(),
        c.email_index.into(),
        c.key_id.into(),
        c.source_id.into(),
        c.email.into(),
        c.name.into(),
        c.metadata.into(),
        c.audit_key.into(),
    ]
}

/// A customer, its own key included: $1 tenant, $2 customer, $3 source_index, $4 email_index,
/// $5 key_id, $6 source_id, $7 email, $8 name, $9 metadata (ciphertexts under key_id), $10 the
/// customer's own key wrapped under key_id. Nothing when the source_id exists already.
const INSERT_CUSTOMER: &str = "\
INSERT INTO voucher.customer (tenant_id, customer_id, source_index, email_index, key_id,
                              source_id, email, name, metadata, audit_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (tenant_id, source_index) DO NOTHING
RETURNING customer_id";

/// [`INSERT_CUSTOMER`] plus the `customer.created` audit row in the same statement (exactly the
/// row `audit::write` makes: the row hash over the stored values); $11 the actor (jsonb, parsed
/// once per backend: `audit::write::jsonb_datum`), $12 the event id
/// (`audit::write::take_event_id`, taken first: no subquery needs to use it twice; a conflict
/// leaves a gap, as a rollback does), $13 `$11::text` (cached per backend).
const INSERT_CUSTOMER_AUDITED: &str = "\
WITH c AS (
    INSERT INTO voucher.customer (tenant_id, customer_id, source_index, email_index, key_id,
                                  source_id, email, name, metadata, audit_key)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (tenant_id, source_index) DO NOTHING
    RETURNING customer_id)
INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, object_id,
                                 details, row_hash)
SELECT $1, $12, now(), $11, 'customer.created', 'customer', $2::text, '{}'::jsonb,
       voucher._audit_hash($1, $12, now(), $13, 'customer.created', 'customer', $2::text, '{}')
  FROM c
RETURNING event_id";

const INSERT_TYPES: [pg_sys::Oid; 10] = [
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::INT4OID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
];

const AUDITED_TYPES: [pg_sys::Oid; 13] = [
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::INT4OID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::JSONBOID,
    pg_sys::INT8OID,
    pg_sys::TEXTOID,
];

/// An existing customer's fields, all under data key $3 (source_id and the customer's own key
/// only when they moved to it). The row is named by both its unique keys ($10 the blind index it
/// was found and locked by): on a table never analyzed both unique indexes and the other
/// tenant-led ones estimate one row while the table is small, and a plan kept then probed by
/// the primary key's rival, reading every customer of the tenant through
/// customer_tenant_id_source_index_key with customer_id as a filter (issue 17,
/// notes/issue-17-traps). Now whichever unique index the plan takes, it probes one row.
const UPDATE_CUSTOMER: &str = "\
UPDATE voucher.customer SET key_id = $3, source_id = coalesce($4, source_id), email = $5,
       email_index = $6, name = $7, metadata = $8, updated_at = now(),
       audit_key = coalesce($9, audit_key)
 WHERE tenant_id = $1 AND customer_id = $2 AND source_index = $10";

const UPDATE_TYPES: [pg_sys::Oid; 10] = [
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::INT4OID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
    pg_sys::BYTEAOID,
];

/// The blind index the evaluation statement joins on; without index keys (a tenant that never
/// stored a customer) a value that matches no row.
pub fn source_index_read(
    client: &SpiClient<'_>,
    tenant: &Tenant,
    source_id: &str,
) -> Result<Vec<u8>> {
    Ok(store::index_keys_read(client, tenant)?
        .map(|k| keyring::blind_index(&k.source, source_id))
        .unwrap_or_default())
}

/// May the customer with this blind index (or a new one) hold personal fields? Two statements:
/// on a Citus cluster the check (which reads the tenant's settings) must run on the node the
/// client is connected to, not inside the look-up that Citus sends to the customer's shard.
fn profile_allowed(client: &SpiClient<'_>, tenant: &Tenant, index: &[u8]) -> bool {
    let id = client
        .select(
            "SELECT customer_id FROM voucher.customer WHERE tenant_id = $1 AND source_index = $2",
            None,
            &[store::uuid(tenant).into(), index.to_vec().into()],
        )
        .expect("customer look-up")
        .first()
        .get_one::<pgrx::Uuid>()
        .ok()
        .flatten();
    client
        .select(
            "SELECT voucher._profile_allowed($1, $2)",
            None,
            &[store::uuid(tenant).into(), id.into()],
        )
        .expect("profile consent")
        .first()
        .get_one::<bool>()
        .ok()
        .flatten()
        != Some(false)
}

/// The fields of one customer row as stored.
struct Stored {
    id: pgrx::Uuid,
    key_id: i32,
    email: Option<Vec<u8>>,
    name: Option<Vec<u8>>,
    metadata: Option<Vec<u8>>,
    audit_key: Option<Vec<u8>>,
}

fn upsert_impl(
    source_id: Option<&str>,
    email: Option<&str>,
    name: Option<&str>,
    metadata: Option<JsonB>,
) -> Result<pgrx::Uuid> {
    let ctx = context::authorize(Action::WriteCustomers)?;
    crate::customers::check_customer(source_id, email, name, metadata.as_ref())?;
    let source_id = source_id.expect("checked");
    let tenant = ctx.tenant;
    let metadata_text = metadata.as_ref().map(|m| m.0.to_string());
    // the actor as audit jsonb text (kept per backend for a key, as redemptions keep it)
    let actors = context::actor_strings(&ctx);
    let actor = actors.1.as_str();
    let (id, action, changed) = as_definer(|| {
        Spi::connect_mut(
            |client| -> Result<(pgrx::Uuid, &'static str, Vec<&'static str>)> {
                let index = store::source_index(client, &tenant, source_id)?;
                // privacy (sql/privacy.sql): personal fields only with the 'profile' consent
                // where the tenant requires it (the setting is cached: no statement otherwise)
                if (email.is_some() || name.is_some() || metadata.is_some())
                    && crate::settings::get(tenant, "require_profile_consent") == "true"
                    && !profile_allowed(client, &tenant, &index)
                {
                    return Err(VoucherError::rule("VC014"));
                }
                let email_index = email
                    .map(|e| store::email_index(client, &tenant, e))
                    .transpose()?;
                let existing = |client: &mut SpiClient<'_>| -> Option<Stored> {
                    let t = store::kept(
                        client,
                        "SELECT customer_id, key_id, email, name, metadata, audit_key \
                           FROM voucher.customer \
                          WHERE tenant_id = $1 AND source_index = $2 FOR NO KEY UPDATE",
                        &[pg_sys::UUIDOID, pg_sys::BYTEAOID],
                        &[store::uuid(&tenant).into(), index.clone().into()],
                    );
                    if t.is_empty() {
                        return None;
                    }
                    let r = t.first();
                    Some(Stored {
                        id: r.get(1).ok().flatten().expect("customer_id"),
                        key_id: r.get(2).ok().flatten().expect("key_id"),
                        email: r.get(3).ok().flatten(),
                        name: r.get(4).ok().flatten(),
                        metadata: r.get(5).ok().flatten(),
                        audit_key: r.get(6).ok().flatten(),
                    })
                };
                // INSERT first (a new customer with its audit key, and its audit row); on a
                // conflict, the existing row, locked
                let old = {
                    // Where redeem's direct writers may write (their checks: redeem/direct.rs),
                    // the customer goes in as INSERT ... ON CONFLICT DO NOTHING would put it
                    // (`insert_customer`) and the audit row after it; else one statement writes
                    // both. The transaction id, then the event id (the sealing horizon of the
                    // audit log): taken here for the statement, by the writer after the INSERT.
                    let writer = crate::redeem::direct::AuditWriter::open(store::uuid(&tenant));
                    let event_id = match writer {
                        Some(_) => 0,
                        None => crate::audit::write::take_event_id(),
                    };
                    let id = pgrx::Uuid::from_bytes(rng::uuid_v7());
                    let row = crate::common::uuid_text(id.as_bytes());
                    // the four fields and the customer's own key
                    let (key_id, key) = store::reserve_for(client, &tenant, 5)?;
                    let seal = |column: &str, v: &[u8]| {
                        store::seal_with(
                            key_id,
                            &key,
                            &tenant,
                            Place {
                                table: "customer",
                                column,
                                row: &row,
                            },
                            v,
                        )
                    };
                    let meta = metadata_text.as_deref().unwrap_or("{}");
                    let audit_key = new_customer_key(key_id, &key, &tenant, &row);
                    let sealed = (
                        seal("source_id", source_id.as_bytes()),
                        email.map(|e| seal("email", e.as_bytes())),
                        name.map(|n| seal("name", n.as_bytes())),
                        seal("metadata", meta.as_bytes()),
                    );
                    let new = NewCustomer {
                        id,
                        source_index: &index,
                        email_index: email_index.as_deref(),
                        key_id,
                        source_id: &sealed.0,
                        email: sealed.1.as_deref(),
                        name: sealed.2.as_deref(),
                        metadata: Some(&sealed.3),
                        audit_key: &audit_key,
                    };
                    let made = match writer {
                        Some(w) => {
                            let made = insert_customer(client, &tenant, &new);
                            if made {
                                let empty = crate::audit::write::jsonb_kept("{}");
                                let actor_jsonb = crate::audit::write::jsonb_kept(actor);
                                w.write(&crate::redeem::direct::Event {
                                    actor_text: &actor_jsonb.1,
                                    actor_jsonb: actor_jsonb.0,
                                    action: "customer.created",
                                    object_type: "customer",
                                    object_id: &row,
                                    details: (empty.0, &empty.1),
                                })?;
                            } else {
                                w.close();
                            }
                            made
                        }
                        None => {
                            let mut args = insert_args(&tenant, &new);
                            args.extend([
                                crate::audit::write::jsonb_datum(actor),
                                event_id.into(),
                                crate::audit::write::jsonb_text(actor).into(),
                            ]);
                            !store::kept(client, INSERT_CUSTOMER_AUDITED, &AUDITED_TYPES, &args)
                                .is_empty()
                        }
                    };
                    if made {
                        return Ok((id, "", vec![]));
                    }
                    existing(client).expect("a concurrent upsert created it")
                };
                // An update: compare with the stored values (decrypted) to name what changed, and
                // write every field under the active key (a fresh nonce for each).
                let row = old.id.to_string();
                let place = |column: &'static str| Place {
                    table: "customer",
                    column,
                    row: &row,
                };
                let open = |client: &mut SpiClient<'_>,
                            column: &'static str,
                            ct: &Option<Vec<u8>>|
                 -> Result<Option<String>> {
                    ct.as_ref()
                        .map(|c| store::open_text(client, &tenant, place(column), c))
                        .transpose()
                };
                let old_email = open(client, "email", &old.email)?;
                let old_name = open(client, "name", &old.name)?;
                let old_meta = open(client, "metadata", &old.metadata)?;
                let new_email = email.map(str::to_string).or(old_email.clone());
                let new_name = name.map(str::to_string).or(old_name.clone());
                let new_meta = metadata_text.clone().or(old_meta.clone());
                let mut changed = vec![];
                if new_email != old_email {
                    changed.push("email");
                }
                if new_name != old_name {
                    changed.push("name");
                }
                let meta_changed = match (&metadata, &old_meta) {
                    (Some(m), Some(o)) => {
                        serde_json::from_str::<serde_json::Value>(o).ok().as_ref() != Some(&m.0)
                    }
                    (Some(_), None) => true,
                    _ => false,
                };
                if meta_changed {
                    changed.push("metadata");
                }
                if changed.is_empty() {
                    return Ok((old.id, "customer.updated", changed));
                }
                let (key_id, key) = store::reserve_for(client, &tenant, 5)?;
                let seal = |column: &'static str, v: &Option<String>| {
                    v.as_ref().map(|v| {
                        store::seal_with(key_id, &key, &tenant, place(column), v.as_bytes())
                    })
                };
                let source_ct = if key_id == old.key_id {
                    None
                } else {
                    Some(store::seal_with(
                        key_id,
                        &key,
                        &tenant,
                        place("source_id"),
                        source_id.as_bytes(),
                    ))
                };
                // the customer's own key follows the row to the active data key
                let audit_key = match (&old.audit_key, key_id == old.key_id) {
                    (Some(w), false) => {
                        let material = open_customer_key(client, &tenant, &row, w)?;
                        Some(keyring::wrap_customer_key(
                            &key, key_id, &tenant, &row, &material,
                        ))
                    }
                    _ => None,
                };
                let email_index = match (&email_index, &new_email) {
                    (Some(i), _) => Some(i.clone()),
                    (None, Some(e)) => Some(store::email_index(client, &tenant, e)?),
                    (None, None) => None,
                };
                store::kept(
                    client,
                    UPDATE_CUSTOMER,
                    &UPDATE_TYPES,
                    &[
                        store::uuid(&tenant).into(),
                        old.id.into(),
                        key_id.into(),
                        source_ct.into(),
                        seal("email", &new_email).into(),
                        email_index.into(),
                        seal("name", &new_name).into(),
                        seal("metadata", &new_meta).into(),
                        audit_key.into(),
                        index.clone().into(),
                    ],
                );
                Ok((old.id, "customer.updated", changed))
            },
        )
    })?;
    // the audit row names the fields that changed, never their values
    // a creation was audited by its own statement; an update names the changed fields
    if !changed.is_empty() {
        let details = if action == "customer.created" {
            serde_json::json!({})
        } else {
            serde_json::json!({ "changed": changed })
        };
        events::record(&Event {
            tenant,
            actor: context::actor_json(Some(&ctx)),
            action,
            object_type: Some("customer"),
            object_id: Some(id.to_string()),
            details,
            at: None,
        });
    }
    Ok(id)
}

/// Creates or updates a customer by source_id; NULL arguments leave a field unchanged. Every
/// personal field is stored encrypted (AES-256-GCM); source_id and email are found through
/// blind indexes.
#[pg_extern(volatile, parallel_unsafe)]
fn upsert_customer(
    source_id: Option<&str>,
    email: default!(Option<&str>, "NULL"),
    name: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> pgrx::Uuid {
    api(|| upsert_impl(source_id, email, name, metadata))
}

/// The customers whose normalized (trimmed, lower-case) email is `email`, through its blind
/// index: nothing is decrypted.
#[pg_extern(stable, parallel_restricted)]
fn find_customer(email: Option<&str>) -> SetOfIterator<'static, pgrx::Uuid> {
    let ids = api(|| {
        let ctx = context::authorize(Action::ReadCustomers)?;
        let Some(email) = email else {
            return Ok(vec![]);
        };
        as_definer(|| {
            Spi::connect(|client| {
                // read-only: a tenant without index keys has no customers to find
                let Some(keys) = store::index_keys_read(client, &ctx.tenant)? else {
                    return Ok(vec![]);
                };
                let index = keyring::blind_index(&keys.email, &keyring::normalize_email(email));
                Ok(client
                    .select(
                        "SELECT customer_id FROM voucher.customer \
                          WHERE tenant_id = $1 AND email_index = $2 ORDER BY customer_id",
                        None,
                        &[store::uuid(&ctx.tenant).into(), index.into()],
                    )
                    .expect("find customer")
                    .filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten())
                    .collect::<Vec<_>>())
            })
        })
    });
    SetOfIterator::new(ids)
}

/// May the current context read personal data in clear? admin and manager keys.
fn may_read_personal() -> Option<context::Context> {
    context::current().filter(|c| matches!(c.role, KeyRole::Admin | KeyRole::Manager))
}

const DECRYPTABLE: &[(&str, &str)] = &[
    ("customer", "source_id"),
    ("customer", "email"),
    ("customer", "name"),
    ("customer", "metadata"),
    ("redemption", "metadata"),
];

/// Internal, for the views: the plaintext of a stored ciphertext, for admin and manager keys
/// (NULL for other roles and without a context). A ciphertext that fails to authenticate raises
/// XX001 naming the table, column and row.
#[pg_extern(stable, parallel_restricted, name = "_decrypt")]
fn decrypt_sql(
    table: &str,
    column: &str,
    row: Option<pgrx::Uuid>,
    ct: Option<&[u8]>,
) -> Option<String> {
    api(|| {
        let (Some(row), Some(ct)) = (row, ct) else {
            return Ok(None);
        };
        let Some((table, column)) = DECRYPTABLE
            .iter()
            .find(|(t, c)| *t == table && *c == column)
            .copied()
        else {
            return Err(VoucherError::invalid("not an encrypted column"));
        };
        let Some(ctx) = may_read_personal() else {
            return Ok(None);
        };
        let row = row.to_string();
        as_definer(|| {
            Spi::connect_mut(|client| {
                store::open_text(
                    client,
                    &ctx.tenant,
                    Place {
                        table,
                        column,
                        row: &row,
                    },
                    ct,
                )
                .map(Some)
            })
        })
    })
}
