//! The details of a redemption's audit row (`redemption.created`), defined once for every
//! writer: the one-statement claims (statements.rs, hot.rs) and the Citus path
//! (scale/redeem.rs).

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use crate::common::jsonb::{Jsonb, Object};

/// `voucher._redemption_details`: the jsonb `jsonb_build_object('redemption_id', ..,
/// 'campaign_id', .., 'customer_id', .., 'order_id', .., 'order_amount', .., 'amount', ..,
/// 'discount', .., 'balance_after', .., 'idempotency_key', ..)` makes, built without printing
/// and parsing each value (common::jsonb; issue 17: 45k instructions per redemption as
/// `jsonb_build_object`). Every argument may be NULL, as there.
#[pg_extern(immutable, parallel_safe, name = "_redemption_details")]
#[allow(clippy::too_many_arguments)]
pub fn redemption_details(
    redemption_id: Option<pgrx::Uuid>,
    campaign_id: Option<pgrx::Uuid>,
    customer_id: Option<pgrx::Uuid>,
    order_id: Option<&str>,
    order_amount: Option<AnyNumeric>,
    amount: Option<AnyNumeric>,
    discount: Option<AnyNumeric>,
    balance_after: Option<AnyNumeric>,
    idempotency_key: Option<&str>,
) -> Jsonb {
    let mut o = Object::new();
    o.uuid("redemption_id", redemption_id);
    o.uuid("campaign_id", campaign_id);
    o.uuid("customer_id", customer_id);
    o.text("order_id", order_id);
    o.numeric("order_amount", order_amount);
    o.numeric("amount", amount);
    o.numeric("discount", discount);
    o.numeric("balance_after", balance_after);
    o.text("idempotency_key", idempotency_key);
    o.finish()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The same jsonb (equal, with the same text and size) as jsonb_build_object of the same
    /// values: numbers of every scale, NaN and the infinities (text, as there), NULLs, strings
    /// that need escaping.
    #[pg_test]
    fn details_are_jsonb_build_object() {
        let cases = [
            "'01a23d73-7f4f-7546-b633-b0a553cb5108'::uuid, gen_random_uuid(), NULL::uuid, \
             'order-1', 149.37::numeric, NULL::numeric, 14.94::numeric, NULL::numeric, NULL::text",
            "gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), NULL::text, 0::numeric, \
             12.500::numeric, 0.00::numeric, 1e30::numeric, 'idem \"quoted\" \\ é'",
            "NULL::uuid, NULL::uuid, NULL::uuid, '', 'NaN'::numeric, 'Infinity'::numeric, \
             '-Infinity'::numeric, -0.000001::numeric, 'k'",
            "NULL::uuid, NULL::uuid, NULL::uuid, NULL::text, NULL::numeric, NULL::numeric, \
             NULL::numeric, NULL::numeric, NULL::text",
        ];
        for args in cases {
            let same = Spi::get_one::<bool>(&format!(
                "WITH a (r, c, cu, o, oa, am, d, b, k) AS (SELECT {args})
                 SELECT x = y AND x::text = y::text AND pg_column_size(x) = pg_column_size(y)
                   FROM a, LATERAL (SELECT voucher._redemption_details(r, c, cu, o, oa, am, d, b, k),
                                           jsonb_build_object('redemption_id', r, 'campaign_id', c,
                            'customer_id', cu, 'order_id', o, 'order_amount', oa, 'amount', am,
                            'discount', d, 'balance_after', b, 'idempotency_key', k)) j (x, y)"
            ));
            assert_eq!(same, Ok(Some(true)), "{args}");
        }
    }
}
