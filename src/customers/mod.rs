//! Customers, known by the application's own id (`source_id`): the checks of their fields, shared
//! by `upsert_customer` (sql/customers.sql) and by validation and redemption, which create a
//! customer on first use.

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::common::error::{api, Result, VoucherError};

/// Longest customer id or name.
pub const MAX_TEXT: usize = 200;
/// Largest metadata document, serialized.
const MAX_METADATA: usize = 65_536;

pub fn check_customer_id(source_id: Option<&str>) -> Result<&str> {
    let id = source_id.ok_or(VoucherError::NullArgument("customer"))?;
    if id.trim().is_empty() {
        return Err(VoucherError::invalid("customer must not be empty"));
    }
    if id.chars().count() > MAX_TEXT {
        return Err(VoucherError::invalid(format!(
            "customer id is longer than {MAX_TEXT} characters"
        )));
    }
    Ok(id)
}

pub fn check_metadata(metadata: Option<&JsonB>) -> Result<()> {
    if let Some(JsonB(value)) = metadata {
        if !value.is_object() {
            return Err(VoucherError::invalid("metadata must be a JSON object"));
        }
        if value.to_string().len() > MAX_METADATA {
            return Err(VoucherError::invalid("metadata is larger than 64 kB"));
        }
    }
    Ok(())
}

/// Internal: checks a customer's fields, raising 22023 / 22004.
#[pg_extern(immutable, parallel_safe, name = "_check_customer")]
fn check_customer_sql(
    source_id: Option<&str>,
    email: Option<&str>,
    name: Option<&str>,
    metadata: Option<JsonB>,
) {
    api(|| check_customer(source_id, email, name, metadata.as_ref()))
}

/// A customer's fields as upsert_customer takes them (src/crypto/customers.rs): 22023 / 22004
/// when not acceptable.
pub fn check_customer(
    source_id: Option<&str>,
    email: Option<&str>,
    name: Option<&str>,
    metadata: Option<&JsonB>,
) -> Result<()> {
    {
        check_customer_id(source_id)?;
        if let Some(e) = email {
            if e.chars().count() > 320 {
                return Err(VoucherError::invalid("email is longer than 320 characters"));
            }
            let parts: Vec<&str> = e.split('@').collect();
            if parts.len() != 2
                || parts
                    .iter()
                    .any(|p| p.is_empty() || p.chars().any(char::is_whitespace))
            {
                return Err(VoucherError::invalid("email is not an e-mail address"));
            }
        }
        if name.is_some_and(|n| n.chars().count() > MAX_TEXT) {
            return Err(VoucherError::invalid(format!(
                "name is longer than {MAX_TEXT} characters"
            )));
        }
        check_metadata(metadata)
    }
}
