//! A redemption's claim on a Citus cluster, as statements Citus routes to the tenant's shard.
//!
//! On one node the claim, the redemption row and its audit row are one statement with
//! data-modifying CTEs (src/redeem/statements.rs). Citus router-plans only SELECT, UPDATE and
//! DELETE CTEs: it would run that statement as four sub-plans whose intermediate results go
//! through the coordinator and are broadcast to every worker, turning each redemption into a
//! two-phase commit over all workers. Here the same work is three single-shard statements (the
//! conditional UPDATE, the INSERT of the redemption, the audit row) plus a local read of the
//! event id: each a router plan on the tenant's worker, committed there alone.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// What `claim_sql` takes, as values.
pub struct Claim<'a> {
    pub tenant: pgrx::Uuid,
    pub voucher_id: pgrx::Uuid,
    pub redemption_limit: Option<i32>,
    pub spend: Option<AnyNumeric>,
    pub redemption_id: pgrx::Uuid,
    pub campaign_id: pgrx::Uuid,
    pub customer: Option<pgrx::Uuid>,
    pub order_id: Option<&'a str>,
    pub order_amount: Option<AnyNumeric>,
    pub discount: AnyNumeric,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<Vec<u8>>,
    /// The encrypted metadata and the data key it is sealed with (crypto).
    pub metadata: Option<Vec<u8>>,
    pub key_id: Option<i32>,
    pub actor: &'a str,
    pub actor_json: &'a str,
}

/// Claims a use of an evaluated voucher and records the redemption and its audit row. None if
/// the conditional UPDATE matched no row (another redeemer got there first, or the voucher was
/// disabled); else the balance after the claim.
pub fn claim(client: &mut SpiClient<'_>, c: &Claim<'_>) -> Option<Option<AnyNumeric>> {
    let claimed = client
        .update(
            "UPDATE voucher.code v
                SET redeemed_count = v.redeemed_count + 1, balance = v.balance - $4
              WHERE v.tenant_id = $1 AND v.voucher_id = $2 AND v.active
                AND ($3::integer IS NULL OR v.redeemed_count < $3)
                AND ($4::numeric IS NULL OR v.balance >= $4)
             RETURNING v.balance::numeric",
            None,
            &[
                c.tenant.into(),
                c.voucher_id.into(),
                c.redemption_limit.into(),
                c.spend.clone().into(),
            ],
        )
        .expect("claim");
    if claimed.is_empty() {
        return None;
    }
    let balance = claimed.first().get::<AnyNumeric>(1).ok().flatten();
    client
        .update(
            "INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id,
                 customer_id, order_id, order_amount, amount, discount, balance_after,
                 idempotency_key, request_hash, metadata, redeemed_by, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            None,
            &[
                c.tenant.into(),
                c.redemption_id.into(),
                c.voucher_id.into(),
                c.campaign_id.into(),
                c.customer.into(),
                c.order_id.into(),
                c.order_amount.clone().into(),
                c.spend.clone().into(),
                c.discount.clone().into(),
                balance.clone().into(),
                c.idempotency_key.into(),
                c.request_hash.clone().into(),
                c.metadata.clone().into(),
                c.actor.into(),
                c.key_id.into(),
            ],
        )
        .expect("redemption insert");
    // the audit row's details exactly as the one-statement form builds them (jsonb of the row)
    let details = client
        .update(
            "SELECT voucher._redemption_details($1::uuid, $2::uuid, $3::uuid, $4::text,
                 $5::numeric, $6::numeric, $7::numeric, $8::numeric, $9::text)::text",
            Some(1),
            &[
                c.redemption_id.into(),
                c.campaign_id.into(),
                c.customer.into(),
                c.order_id.into(),
                c.order_amount.clone().into(),
                c.spend.clone().into(),
                c.discount.clone().into(),
                balance.clone().into(),
                c.idempotency_key.into(),
            ],
        )
        .expect("audit details")
        .first()
        .get_one::<String>()
        .ok()
        .flatten()
        .expect("audit details");
    let at: Option<pgrx::datum::TimestampWithTimeZone> = None;
    let args: [DatumWithOid; 7] = [
        c.tenant.into(),
        at.into(),
        c.actor_json.into(),
        "redemption.created".into(),
        "voucher".into(),
        c.voucher_id.to_string().into(),
        details.into(),
    ];
    super::cluster::insert_audit(client, args);
    Some(balance)
}
