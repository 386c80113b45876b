//! Import of codes chosen by the caller (`add_code`): checked and normalized like generated ones,
//! taking the tenant's code lock shared so it cannot race a generation.

use pgrx::prelude::*;

use super::generate::{load_campaign, lock_tenant_codes};
use crate::audit;
use crate::codes::pattern::{self, MAX_CODE};
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::Event;
use crate::common::rng;
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;

/// A code as an importer gave it: its canonical form, if it can be a code.
pub fn importable(code: Option<&str>) -> Result<String> {
    let code = code.ok_or(VoucherError::NullArgument("code"))?;
    let canonical = pattern::normalize(code);
    if canonical.is_empty() {
        return Err(VoucherError::invalid("code must not be empty"));
    }
    if canonical.len() > MAX_CODE || code.chars().count() > 2 * MAX_CODE {
        return Err(VoucherError::invalid(format!(
            "code is longer than {MAX_CODE} characters"
        )));
    }
    if !canonical.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(VoucherError::invalid_hint(
            "code contains characters other than printable ASCII",
            "codes are letters, digits and punctuation; spaces and dashes are ignored",
        ));
    }
    Ok(canonical)
}

fn add_code_impl(campaign: Option<pgrx::Uuid>, code: Option<&str>) -> Result<pgrx::Uuid> {
    let ctx = context::authorize(Action::ManageCampaigns)?;
    let campaign = campaign.ok_or(VoucherError::NullArgument("campaign"))?;
    let canonical = importable(code)?;
    let given = code.unwrap_or_default().trim();
    let display = (given != canonical).then(|| given.to_string());
    let tenant = ctx.tenant;
    let id = pgrx::Uuid::from_bytes(rng::uuid_v7());
    let inserted = as_definer(|| {
        Spi::connect_mut(|client| -> Result<bool> {
            let c = load_campaign(client, tenant, campaign)?;
            lock_tenant_codes(client, tenant, true);
            let rows = client
                .update(
                    "INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code, display, balance) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, code) DO NOTHING \
                     RETURNING voucher_id",
                    None,
                    &[
                        pgrx::Uuid::from_bytes(tenant).into(),
                        id.into(),
                        campaign.into(),
                        canonical.as_str().into(),
                        display.clone().into(),
                        c.gift_balance.into(),
                    ],
                )
                .expect("insert runs");
            Ok(!rows.is_empty())
        })
    })?;
    if !inserted {
        return Err(VoucherError::Duplicate(
            "this code already exists in the tenant".into(),
        ));
    }
    audit::write(&Event {
        tenant,
        actor: context::actor_json(Some(&ctx)),
        action: "voucher.created",
        object_type: Some("voucher"),
        object_id: Some(id.to_string()),
        details: serde_json::json!({ "campaign_id": campaign.to_string(), "code": canonical }),
        at: None,
    });
    Ok(id)
}

/// Imports a code chosen by the caller into a campaign; returns the new voucher's id.
#[pg_extern(volatile, parallel_unsafe)]
fn add_code(campaign: Option<pgrx::Uuid>, code: Option<&str>) -> pgrx::Uuid {
    api(|| add_code_impl(campaign, code))
}
