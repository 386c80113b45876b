//! Tenants and their API keys (../shared/API.md, "Tenants and keys").

use pgrx::prelude::*;

use crate::common::error::{api, Result, VoucherError};
use crate::common::events::{self, Event};
use crate::common::rng;
use crate::tenancy::context::{self, as_tenant_definer, uuid_bytes};
use crate::tenancy::definer::role_name;
use crate::tenancy::keys;
use crate::tenancy::roles::{Action, KeyRole};

/// Longest tenant name or key label we accept.
const MAX_NAME: usize = 200;

/// A required, non-blank piece of text of bounded length.
pub fn required_text<'a>(what: &'static str, value: Option<&'a str>) -> Result<&'a str> {
    let v = value.ok_or(VoucherError::NullArgument(what))?;
    if v.trim().is_empty() {
        return Err(VoucherError::invalid(format!("{what} must not be empty")));
    }
    bounded_text(what, v)
}

pub fn bounded_text<'a>(what: &'static str, v: &'a str) -> Result<&'a str> {
    if v.chars().count() > MAX_NAME {
        return Err(VoucherError::invalid(format!(
            "{what} is longer than {MAX_NAME} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(VoucherError::invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(v)
}

fn create_tenant_impl(name: Option<&str>) -> Result<pgrx::Uuid> {
    let operator = context::require_operator("create tenants")?;
    let name = required_text("name", name)?;
    let id = rng::uuid_v7();
    let actor = context::actor_json(None);
    as_tenant_definer(id, || {
        Spi::run_with_args(
            "INSERT INTO voucher.tenant (tenant_id, name, created_by) VALUES ($1, $2, $3)",
            &[
                pgrx::Uuid::from_bytes(id).into(),
                name.into(),
                role_name(operator).into(),
            ],
        )
    })
    .expect("tenant insert runs");
    events::record(&Event {
        tenant: id,
        actor,
        action: "tenant.created",
        object_type: Some("tenant"),
        object_id: Some(pgrx::Uuid::from_bytes(id).to_string()),
        details: serde_json::json!({ "name": name }),
        at: None,
    });
    Ok(pgrx::Uuid::from_bytes(id))
}

/// Operators: creates a tenant and returns its id.
#[pg_extern(volatile, parallel_unsafe)]
fn create_tenant(name: Option<&str>) -> pgrx::Uuid {
    api(|| create_tenant_impl(name))
}

fn create_api_key_impl(
    role: Option<&str>,
    label: Option<&str>,
    expires_at: Option<TimestampWithTimeZone>,
    tenant: Option<pgrx::Uuid>,
) -> Result<String> {
    let role = KeyRole::parse(role.ok_or(VoucherError::NullArgument("role"))?)?;
    let label = label.map(|l| bounded_text("label", l)).transpose()?;
    let ctx = context::current();
    let requested = tenant.as_ref().map(uuid_bytes);
    let (target, created_by, actor) = match requested {
        Some(t) if ctx.as_ref().map(|c| c.tenant) != Some(t) => {
            let operator =
                context::require_operator("issue keys for a tenant they are not acting as")?;
            if !context::tenant_exists(t) {
                return Err(VoucherError::invalid("no such tenant"));
            }
            (t, role_name(operator), context::actor_json(None))
        }
        _ => {
            let ctx = context::authorize(Action::ManageKeys)?;
            (
                ctx.tenant,
                context::actor_label(&ctx),
                context::actor_json(Some(&ctx)),
            )
        }
    };
    if let Some(at) = expires_at {
        let past = Spi::get_one_with_args::<bool>("SELECT $1 <= now()", &[at.into()])
            .expect("timestamp comparison runs")
            .unwrap_or(false);
        if past {
            return Err(VoucherError::invalid("expires_at must be in the future"));
        }
    }
    let key = keys::generate();
    let key_id = rng::uuid_v7();
    as_tenant_definer(target, || {
        Spi::connect_mut(|c| {
            context::hold_tenant(c, target)?;
            c.update(
                "INSERT INTO voucher.credential \
                   (tenant_id, key_id, prefix, key_hash, role, label, expires_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                None,
                &[
                    pgrx::Uuid::from_bytes(target).into(),
                    pgrx::Uuid::from_bytes(key_id).into(),
                    key.display_prefix.as_str().into(),
                    key.hash.to_vec().into(),
                    role.as_str().into(),
                    label.into(),
                    expires_at.into(),
                    created_by.into(),
                ],
            )
            .expect("credential insert runs");
            Ok(())
        })
    })?;
    events::record(&Event {
        tenant: target,
        actor,
        action: "key.created",
        object_type: Some("key"),
        object_id: Some(pgrx::Uuid::from_bytes(key_id).to_string()),
        details: serde_json::json!({
            "role": role.as_str(), "label": label, "prefix": key.display_prefix,
            "expires_at": expires_at.map(|t| t.to_string()),
        }),
        at: None,
    });
    Ok(key.plaintext)
}

/// Issues an API key and returns it in plaintext, once; only its SHA-256 is stored.
#[pg_extern(volatile, parallel_unsafe)]
fn create_api_key(
    role: Option<&str>,
    label: default!(Option<&str>, "NULL"),
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    tenant: default!(Option<pgrx::Uuid>, "NULL"),
) -> String {
    api(|| create_api_key_impl(role, label, expires_at, tenant))
}
