//! The steps of export and forget that need the tenant's keys (src/crypto/): finding a customer
//! by its blind index, opening what audit rows hold about a customer under its own key, and
//! replacing a forgotten customer's fields by a pseudonym while destroying its key.
//!
//! Internal functions, called only from the SECURITY DEFINER functions of sql/privacy.sql (as
//! `voucher_definer`, with row-level security on the tenant); each checks that the tenant it is
//! given is the caller's.

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;

use crate::common::error::{api, Result, VoucherError};
use crate::common::spi::run_kept;
use crate::crypto::customers::customer_key;
use crate::crypto::envelope::{self, Aad};
use crate::crypto::store::{self, Place};
use crate::tenancy::context;

type Tenant = [u8; 16];

/// The caller's tenant, which must be `t`.
fn tenant(t: pgrx::Uuid) -> Result<Tenant> {
    match context::current_tenant() {
        Some(c) if c == *t.as_bytes() => Ok(c),
        _ => Err(VoucherError::invalid("not the current tenant")),
    }
}

/// Internal: the live (not forgotten) customer with this source_id, through its blind index.
#[pg_extern(stable, parallel_restricted, name = "_customer_by_source")]
fn customer_by_source(t: pgrx::Uuid, source_id: &str) -> Option<pgrx::Uuid> {
    api(|| {
        let tenant = tenant(t)?;
        Spi::connect(|client| {
            let index = crate::crypto::customers::source_index_read(client, &tenant, source_id)?;
            Ok(client
                .select(
                    "SELECT customer_id FROM voucher.customer \
                      WHERE tenant_id = $1 AND source_index = $2 AND forgotten_at IS NULL",
                    None,
                    &[t.into(), index.into()],
                )
                .expect("customer by source")
                .first()
                .get_one::<pgrx::Uuid>()
                .ok()
                .flatten())
        })
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Internal, for the export: the personal part of an audit row about `customer` (the hex
/// ciphertext crypto's `seal_for_audit` wrote), decrypted; NULL when the customer's key is
/// destroyed. A ciphertext that fails to authenticate raises XX001.
#[pg_extern(stable, parallel_restricted, name = "_open_personal")]
fn open_personal(t: pgrx::Uuid, customer: pgrx::Uuid, sealed: &str) -> Option<pgrx::JsonB> {
    api(|| {
        let tenant = tenant(t)?;
        let cust = customer.to_string();
        let place = Place {
            table: "audit_event",
            column: "personal",
            row: &cust,
        };
        let failed = || place.failed(&envelope::EnvelopeError::Authentication);
        let ct = unhex(sealed).ok_or_else(failed)?;
        Spi::connect_mut(|client| {
            let Some(key) = customer_key(client, &tenant, customer)? else {
                return Ok(None);
            };
            let aad = Aad {
                tenant,
                table: "audit_event",
                column: "personal",
                row: &cust,
            };
            let plain = envelope::open(&key, &aad, &ct).map_err(|e| place.failed(&e))?;
            let value = serde_json::from_slice(&plain).map_err(|_| failed())?;
            Ok(Some(pgrx::JsonB(value)))
        })
    })
}

/// The statement of `_pseudonymize`, prepared once per backend (retention runs it per customer):
/// the customer row and its own key (crypto: the audit_key column) in one statement. $1 tenant,
/// $2 customer, $3 data key, $4 the pseudonym's ciphertext, $5 the blind index: 32 random bytes
/// (made here, not by a volatile function in the statement, which Citus refuses in an UPDATE of
/// a distributed table).
const PSEUDONYMIZE: &str = "\
UPDATE voucher.customer
   SET source_index = $5, key_id = $3, source_id = $4, email = NULL, email_index = NULL, name = NULL,
       metadata = NULL, audit_key = NULL, forgotten_at = now(), updated_at = now()
 WHERE tenant_id = $1 AND customer_id = $2";

thread_local! {
    static KEPT: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// Internal, for forget_customer: erases the customer's profile for good. Its source_id
/// ciphertext becomes that of a pseudonym (`forgotten:<customer_id>`, under the active data
/// key), its blind index 32 random bytes no source_id hashes to, email, name, metadata and the
/// email index NULL; its own key is destroyed, so what audit rows hold about it decrypts no more.
#[pg_extern(volatile, parallel_unsafe, name = "_pseudonymize")]
fn pseudonymize(t: pgrx::Uuid, customer: pgrx::Uuid) {
    api(|| {
        let tenant = tenant(t)?;
        let row = customer.to_string();
        Spi::connect_mut(|client| {
            let (key_id, key) = store::reserve(client, &tenant)?;
            let pseudonym = format!("forgotten:{row}");
            let ct = store::seal_with(
                key_id,
                &key,
                &tenant,
                Place {
                    table: "customer",
                    column: "source_id",
                    row: &row,
                },
                pseudonym.as_bytes(),
            );
            let uuid = pgrx::Uuid::type_oid();
            KEPT.with(|k| {
                run_kept(
                    client,
                    &mut k.borrow_mut(),
                    || PSEUDONYMIZE.to_string(),
                    &[
                        uuid,
                        uuid,
                        pg_sys::INT4OID,
                        pg_sys::BYTEAOID,
                        pg_sys::BYTEAOID,
                    ],
                    true,
                    None,
                    &[
                        t.into(),
                        customer.into(),
                        key_id.into(),
                        ct.into(),
                        crate::common::rng::os_bytes::<32>().to_vec().into(),
                    ],
                )
            });
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::unhex;

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&crate::crypto::keyring::hex(&bytes)), Some(bytes));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), Some(vec![]));
    }
}
