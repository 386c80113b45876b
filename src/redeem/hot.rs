//! Hot vouchers (issue 17): a voucher whose campaign has no redemption limit (discount kind, no
//! per-customer limit) counts its uses in up to 16 slot rows of `voucher.code_use`, never on its
//! own row, instead of all its redemptions queueing on that row's lock until the previous one
//! commits. A redemption takes the first existing slot nobody holds (`SKIP LOCKED`, starting at
//! its backend's pid mod 16 so backends spread out); when every existing slot is held it adds or
//! waits for the slot numbered by its pid. So concurrent redemptions of one voucher wait for
//! each other only when all its slots are held. The voucher's uses are its
//! `redeemed_count` plus its slots (`voucher.vouchers` adds them); each redemption records its
//! slot (`redemption.use_slot`), and `rollback_redemption` gives the use back to that slot.
//! Vouchers with a limit, however large, and gift cards keep their one row as the exact guard.
//!
//! Counting on the voucher row while it was free and in a slot only while another redemption
//! held it (SKIP LOCKED) deadlocked under load: each redemption's foreign-key check took a
//! key-share lock on the voucher row and, holding that row's tuple lock, waited for the row's
//! concurrent updater, which then needed the same tuple lock for its own check. On this path
//! nobody updates the voucher row, and voucher.redemption has no foreign keys any more (see
//! sql/redeem.sql): the voucher row is only read. Its slot rows keep it from being deleted
//! (`voucher._redemptions_keep_refs`); the claim that adds a slot reads the voucher row FOR KEY
//! SHARE (as the slots' foreign key did before it went, so that a parallel pg_restore works), so
//! a concurrent delete of the voucher waits for that claim and then sees its slot.
//!
//! Exports `spread_claim_sql` (kept in statements.rs like the other claims), `spreads`, and the
//! per-backend memory of codes that took this path (`is_spread`, `remember_spread`).

use std::cell::RefCell;

use super::discount::discount_call;
use super::rules::Voucher;
use super::statements::{claimed, with_audit, Customer};

/// Does this evaluated voucher take the spread claim?
pub fn spreads(v: &Voucher) -> bool {
    v.redemption_limit.is_none() && v.per_customer_limit.is_none() && v.kind == "discount"
}

/// The claim of a voucher without a limit, in one statement: every rule checked on the voucher
/// and campaign rows as read (no lock on the voucher row), the use counted in the backend's slot,
/// the redemption (with its slot) and its audit row written. Same parameters as
/// `fast_claim_sql` ($1 tenant, $2 code, $3 order amount, $4 amount, $5 redemption id, $6 the
/// customer's blind index (`Customer`), $7 order id, $8 idempotency key, $9 request hash,
/// $10 metadata (encrypted), $11 actor label, $12 actor, $13 the metadata's data key, $14 the
/// actor as jsonb); no row
/// when a rule fails or the named customer does not exist yet (the caller then creates it, or
/// evaluates, to say why).
pub fn spread_claim_sql(customer: Customer) -> String {
    let ctes = format!(
        "{head},
rec AS (
    INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id,
        customer_id, order_id, order_amount, amount, discount, balance_after, idempotency_key,
        request_hash, metadata, redeemed_by, key_id, use_slot)
    SELECT $1, $5, claim.voucher_id, claim.campaign_id, {id}, $7, $3, NULL, claim.discount,
           NULL, $8, $9, $10, $11, $13, claim.use_slot
      FROM claim
    RETURNING redemption_id, voucher_id, campaign_id, customer_id, order_amount, amount,
              discount, balance_after)",
        head = spread_claim_head(customer),
        id = customer.id(),
    );
    with_audit(&ctes, "$12", "$14", "$7", "$8")
}

/// [`spread_claim_sql`]'s claim alone, for a call that writes the redemption and its audit row
/// itself (redeem's `direct`): the same parameters; returns `statements::claimed`'s columns.
pub fn spread_claim_direct_sql(customer: Customer) -> String {
    claimed(
        &spread_claim_head(customer),
        customer.id(),
        "NULL::numeric",
        "NULL::numeric",
        "claim.use_slot",
    )
}

/// The CTEs of [`spread_claim_sql`] up to the claim (the rules, the slot's use counted).
fn spread_claim_head(customer: Customer) -> String {
    format!(
        "{cust}free AS (
    SELECT v.voucher_id, v.campaign_id, {discount} AS discount
      FROM voucher.code v
      JOIN voucher.campaign c ON c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
     WHERE v.tenant_id = $1 AND v.code = $2
       AND v.active AND c.active{found}
       AND voucher._claimable(c.starts_at, c.expires_at, c.redemption_limit, v.redeemed_count,
                              c.min_order_amount, c.per_customer_limit, c.kind, v.balance,
                              c.discount_type, $3, $4, true)),
pick AS (
    SELECT u.slot FROM voucher.code_use u
     WHERE u.tenant_id = $1 AND u.voucher_id = (SELECT free.voucher_id FROM free)
     ORDER BY (u.slot + 16 - pg_catalog.pg_backend_pid() % 16) % 16
     LIMIT 1
       FOR NO KEY UPDATE SKIP LOCKED),
bump AS (
    UPDATE voucher.code_use u SET used = u.used + 1
     WHERE u.tenant_id = $1 AND u.voucher_id = (SELECT free.voucher_id FROM free)
       AND u.slot = (SELECT pick.slot FROM pick)
    RETURNING u.slot),
made AS (
    INSERT INTO voucher.code_use AS u (tenant_id, voucher_id, slot, used)
    SELECT $1, k.voucher_id, (pg_catalog.pg_backend_pid() % 16)::smallint, 1
      FROM (SELECT v.voucher_id FROM voucher.code v
             WHERE v.tenant_id = $1 AND v.voucher_id = (SELECT free.voucher_id FROM free)
               AND NOT EXISTS (SELECT FROM pick)
               FOR KEY SHARE) k
    ON CONFLICT (tenant_id, voucher_id, slot) DO UPDATE SET used = u.used + 1
    RETURNING u.slot),
claim AS (
    SELECT free.voucher_id, free.campaign_id, free.discount, s.slot AS use_slot
      FROM free CROSS JOIN (SELECT bump.slot FROM bump UNION ALL SELECT made.slot FROM made) s)",
        discount = discount_call("$3"),
        cust = customer.cte(),
        found = customer.found(),
    )
}

/// Codes (per tenant) this backend saw take the spread claim: their next redemption tries it
/// first. A stale entry costs one statement that matches nothing; few entries are kept.
const SPREAD_KEPT: usize = 64;

thread_local! {
    static SPREAD: RefCell<Vec<(pgrx::Uuid, String)>> = const { RefCell::new(Vec::new()) };
}

pub fn is_spread(tenant: pgrx::Uuid, code: &str) -> bool {
    SPREAD.with(|s| s.borrow().iter().any(|(t, c)| *t == tenant && c == code))
}

pub fn remember_spread(tenant: pgrx::Uuid, code: &str, yes: bool) {
    SPREAD.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|(t, c)| !(*t == tenant && c == code));
        if yes {
            if s.len() >= SPREAD_KEPT {
                s.remove(0);
            }
            s.push((tenant, code.to_string()));
        }
    })
}

#[cfg(test)]
mod unit {
    #[test]
    fn the_spread_claim_takes_the_fast_claims_parameters_and_only_unlimited_vouchers() {
        use super::Customer;
        let sql = super::spread_claim_sql(Customer::ByIndex);
        for n in 1..=14 {
            assert!(sql.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!sql.contains("$15"));
        assert!(sql.starts_with("WITH cust AS ("));
        assert!(sql.contains("AND EXISTS (SELECT FROM cust)\n       AND voucher._claimable("));
        let none = super::spread_claim_sql(Customer::None);
        assert!(!none.contains("$6") && !none.contains("FROM cust") && !none.contains("$15"));
        assert!(none.starts_with("WITH free AS ("));
        // only vouchers without a limit (voucher._claimable's `spread`)
        assert!(sql.contains("c.discount_type, $3, $4, true)),"));
        assert!(sql.contains("INSERT INTO voucher.code_use"));
        assert!(sql.contains("SKIP LOCKED"));
        // the voucher row is never updated on this path (see the module's doc)
        assert!(!sql.contains("UPDATE voucher.code "));
        // and the fast claim leaves exactly these vouchers to it
        assert!(super::super::statements::fast_claim_sql(Customer::None)
            .contains("c.discount_type, $3, $4, false)"));
    }

    #[test]
    fn the_memory_of_spread_codes_is_per_tenant_and_bounded() {
        let (a, b) = (
            pgrx::Uuid::from_bytes([1; 16]),
            pgrx::Uuid::from_bytes([2; 16]),
        );
        super::remember_spread(a, "HOT", true);
        assert!(super::is_spread(a, "HOT"));
        assert!(!super::is_spread(b, "HOT"));
        super::remember_spread(a, "HOT", false);
        assert!(!super::is_spread(a, "HOT"));
        for i in 0..200 {
            super::remember_spread(b, &format!("C{i}"), true);
        }
        super::SPREAD.with(|s| assert_eq!(s.borrow().len(), super::SPREAD_KEPT));
        assert!(super::is_spread(b, "C199") && !super::is_spread(b, "C0"));
    }
}
