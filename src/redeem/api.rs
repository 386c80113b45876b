//! Validation and redemption (../shared/API.md, "Validation and redemption").
//!
//! The hot path of the product, so it is Rust, with statements only where PostgreSQL's own
//! machinery is the better tool. `validate` looks the code up (its voucher and campaign rows, by
//! two index probes, lookup.rs, or one statement of plain columns) and judges the rules in Rust.
//! `redeem`, where the direct paths apply (their checks: direct.rs, claim.rs, lookup.rs), looks
//! the code up the same way, finds and locks the customer by its index, judges the rules, claims
//! the customer's allowance on its own counter row (customer_usage, a conditional upsert) where
//! the campaign limits redemptions per customer, claims the voucher by locking and updating its
//! row (claim.rs: active, limit and balance re-checked on the newest locked version), and writes
//! the redemption and its audit row (direct.rs). Elsewhere, the common case is ONE statement: a
//! conditional UPDATE of the voucher that re-checks every rule on the row itself, feeding the
//! INSERT of the redemption and of its audit row; when it matches no row the code is evaluated as
//! above. Either way the voucher's row lock is held only from its claim to commit. Idempotency
//! keys are serialized by a transaction-scoped advisory lock plus a unique index. Lock order is
//! always redemption -> customer_usage -> code, in rollback_redemption too, so the two cannot
//! deadlock. A voucher without a limit counts its uses in slot rows instead of its own row
//! (hot.rs).
//!
//! Everything runs as voucher_definer, so row-level security applies to every statement, and the
//! direct paths run only where they apply it exactly as those statements would.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{AnyNumeric, JsonB};

use super::claim::{self, Claim};
use super::direct::{RedemptionRow, Writer};
use super::hot;
use super::idempotency::{self, RedeemRow};
use super::lookup::Found;
use super::rules::{judge, Request, Verdict};
use super::statements::{
    claim_direct_sql, claim_sql, evaluate, fast_claim_direct_sql, fast_claim_sql, looks_mistyped,
    run, used, voucher_of, Customer, Statements, MISTYPED,
};
use crate::audit;
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::Event;
use crate::common::rng;
use crate::common::srf::TableIterator;
use crate::customers::{check_metadata, MAX_TEXT};
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;
use crate::throttle;

/// Why a claim that matched no row failed: the code evaluated again on a fresh snapshot. A
/// voucher that still looks valid lost its last use to a concurrent redemption (VC004).
fn refusal_after_miss(
    client: &pgrx::spi::SpiClient<'_>,
    tenant: pgrx::Uuid,
    req: &Request,
) -> VoucherError {
    match judge(evaluate(client, tenant, req, true), req, true) {
        Ok(Verdict::Refused { sqlstate, .. }) => VoucherError::rule(sqlstate),
        Ok(Verdict::Valid { .. }) => VoucherError::rule("VC004"),
        Err(e) => e,
    }
}

#[allow(clippy::too_many_arguments)]
fn redeem_impl(
    code: Option<&str>,
    customer: Option<&str>,
    order_amount: Option<AnyNumeric>,
    amount: Option<AnyNumeric>,
    order_id: Option<&str>,
    idempotency_key: Option<&str>,
    metadata: Option<JsonB>,
    client: Option<&str>,
) -> Result<RedeemRow> {
    let ctx = context::authorize(Action::Redeem)?;
    let req = Request::new(code, customer, order_amount, amount)?;
    // a locked-out customer, client or key is refused whatever the code (no audit row each:
    // the lock-out's end sums them up)
    let guard = throttle::Guard::new(&ctx, req.customer, client)?;
    guard.check()?;
    if order_id.is_some_and(|o| o.chars().count() > MAX_TEXT)
        || idempotency_key.is_some_and(|k| k.chars().count() > MAX_TEXT)
    {
        return Err(VoucherError::invalid(format!(
            "order_id and idempotency_key are at most {MAX_TEXT} characters"
        )));
    }
    if idempotency_key == Some("") {
        return Err(VoucherError::invalid("idempotency_key must not be empty"));
    }
    check_metadata(metadata.as_ref())?;
    let hash = idempotency_key
        .map(|_| idempotency::fingerprint(&ctx.tenant, &req, order_id, metadata.as_ref()))
        .transpose()?;
    let tenant = ctx.tenant_uuid();
    let actors = context::actor_strings(&ctx);
    let (actor, actor_json) = (&actors.0, &actors.1);

    let mut known_customer: Option<pgrx::Uuid> = None;
    let outcome = as_definer(|| {
        Spi::connect_mut(|client| {
            // the actor as `::jsonb::text` prints it, and parsed (both kept per backend): the
            // claims hash the text and store the jsonb
            let actor_json = &crate::audit::write::jsonb_text(actor_json);
            // A retry with the same key returns the first result (idempotency.rs). Two steps on
            // purpose: the look-up's snapshot must be taken after the lock.
            if let Some(key) = idempotency_key {
                idempotency::lock(tenant, key);
                let prior = idempotency::replay(
                    client,
                    tenant,
                    key,
                    hash.as_ref(),
                    &req,
                    order_id,
                    metadata.as_ref(),
                )?;
                if let Some(row) = prior {
                    return Ok(row);
                }
            }

            // scale: on a Citus cluster the one-statement forms are not router plans; the
            // claim below runs as single-shard statements instead (src/scale/redeem.rs)
            let cluster = crate::scale::cluster::active();
            // The customer, by the blind index of its source_id (crypto). The one-statement
            // claims find it themselves (statements::Customer); the other paths, and a
            // claim that found no such customer, take find_or_create below, which creates it.
            let index = match req.customer {
                Some(c) if !cluster => {
                    Some(crate::crypto::store::source_index(client, &ctx.tenant, c)?)
                }
                _ => None,
            };
            let uuid = pgrx::Uuid::type_oid();
            let numeric = pg_sys::NUMERICOID;
            let text = pg_sys::TEXTOID;
            let redemption_id = pgrx::Uuid::from_bytes(rng::uuid_v7());
            // metadata is stored encrypted, bound to its redemption row (crypto)
            let (meta_key, meta_ct) = match &metadata {
                Some(m) => {
                    let (k, ct) = crate::crypto::redemptions::seal_metadata(
                        client,
                        &ctx.tenant,
                        redemption_id,
                        m,
                    )?;
                    (Some(k), Some(ct))
                }
                None => (None, None),
            };
            audit::take_xid();

            let fast_types = [
                uuid,
                text,
                numeric,
                numeric,
                uuid,
                pg_sys::BYTEAOID,
                text,
                text,
                pg_sys::BYTEAOID,
                pg_sys::BYTEAOID,
                text,
                text,
                pg_sys::INT4OID,
                pg_sys::JSONBOID,
            ];
            // the actor parsed once per backend, for the audit row's jsonb column
            let actor_jsonb = || audit::write::jsonb_datum(&actors.1);
            let fast_args: [DatumWithOid; 14] = [
                tenant.into(),
                req.code.as_str().into(),
                req.order_amount.clone().into(),
                req.amount.clone().into(),
                redemption_id.into(),
                index.clone().into(),
                order_id.into(),
                idempotency_key.into(),
                hash.clone().into(),
                meta_ct.clone().into(),
                actor.as_str().into(),
                actor_json.as_str().into(),
                meta_key.into(),
                actor_jsonb(),
            ];
            let done = |rows: pgrx::spi::SpiTupleTable<'_>| {
                (!rows.is_empty()).then(|| {
                    let row = rows.first();
                    (
                        redemption_id,
                        row.get(1).ok().flatten().expect("voucher_id"),
                        row.get(2).ok().flatten().expect("discount"),
                        row.get(3).ok().flatten(),
                        false,
                    )
                })
            };
            // A claim for the direct writer (direct.rs) returns the columns of
            // `statements::claimed`; the writer then adds the redemption and its audit row.
            let actor_text = actor_json.as_str();
            /// What a claim gives the direct writer.
            struct Claimed {
                voucher_id: pgrx::Uuid,
                campaign_id: pgrx::Uuid,
                customer_id: Option<pgrx::Uuid>,
                amount: Option<AnyNumeric>,
                discount: AnyNumeric,
                balance_after: Option<AnyNumeric>,
                use_slot: Option<i16>,
            }
            let write = |w: Writer, c: Claimed| -> Result<RedeemRow> {
                w.record(&RedemptionRow {
                    redemption_id,
                    voucher_id: c.voucher_id,
                    campaign_id: c.campaign_id,
                    customer_id: c.customer_id,
                    order_id,
                    order_amount: req.order_amount.clone(),
                    amount: c.amount,
                    discount: c.discount.clone(),
                    balance_after: c.balance_after.clone(),
                    idempotency_key,
                    request_hash: hash.as_deref(),
                    metadata: meta_ct.as_deref(),
                    redeemed_by: actor.as_str(),
                    key_id: meta_key,
                    use_slot: c.use_slot,
                    actor_text,
                    actor_jsonb: audit::write::jsonb_kept(&actors.1).0,
                })?;
                Ok((
                    redemption_id,
                    c.voucher_id,
                    c.discount,
                    c.balance_after,
                    false,
                ))
            };
            let record =
                |w: Writer, rows: pgrx::spi::SpiTupleTable<'_>| -> Result<Option<RedeemRow>> {
                    if rows.is_empty() {
                        w.close();
                        return Ok(None);
                    }
                    let row = rows.first();
                    let claimed = Claimed {
                        voucher_id: row.get(1).ok().flatten().expect("voucher_id"),
                        campaign_id: row.get(2).ok().flatten().expect("campaign_id"),
                        customer_id: row.get(3).ok().flatten(),
                        amount: row.get(4).ok().flatten(),
                        discount: row.get(5).ok().flatten().expect("discount"),
                        balance_after: row.get(6).ok().flatten(),
                        use_slot: row.get(7).ok().flatten(),
                    };
                    write(w, claimed).map(Some)
                };
            // The one-statement claims, each in two forms: naming a customer (found by $6) or
            // none. A code seen to be a voucher without a limit takes the spread claim (hot.rs)
            // first, any other the fast claim.
            // Each also in its form for the direct writer (the claim alone), taken when
            // `Writer::open` allows it.
            type Slot = fn(&mut Statements) -> &mut Option<OwnedPreparedStatement>;
            let (with, fast_slot, spread_slot, fast_direct, spread_direct): (
                Customer,
                Slot,
                Slot,
                Slot,
                Slot,
            ) = if index.is_some() {
                (
                    Customer::ByIndex,
                    |s| &mut s.fast_claim_customer,
                    |s| &mut s.spread_claim_customer,
                    |s| &mut s.fast_claim_customer_direct,
                    |s| &mut s.spread_claim_customer_direct,
                )
            } else {
                (
                    Customer::None,
                    |s| &mut s.fast_claim,
                    |s| &mut s.spread_claim,
                    |s| &mut s.fast_claim_direct,
                    |s| &mut s.spread_claim_direct,
                )
            };
            let spread_claim = |client: &pgrx::spi::SpiClient<'_>| match Writer::open(tenant) {
                Some(w) => record(
                    w,
                    run(
                        client,
                        spread_direct,
                        || hot::spread_claim_direct_sql(with),
                        &fast_types,
                        true,
                        &fast_args,
                    ),
                ),
                None => Ok(done(run(
                    client,
                    spread_slot,
                    || hot::spread_claim_sql(with),
                    &fast_types,
                    true,
                    &fast_args,
                ))),
            };
            let fast_claim = |client: &pgrx::spi::SpiClient<'_>| match Writer::open(tenant) {
                Some(w) => record(
                    w,
                    run(
                        client,
                        fast_direct,
                        || fast_claim_direct_sql(with),
                        &fast_types,
                        true,
                        &fast_args,
                    ),
                ),
                None => Ok(done(run(
                    client,
                    fast_slot,
                    || fast_claim_sql(with),
                    &fast_types,
                    true,
                    &fast_args,
                ))),
            };
            // `forget`: a spread claim that matched nothing drops the code from the memory of
            // spread codes. Not while a named customer may just not exist yet: that miss says
            // nothing about the voucher. A fast claim that then succeeds does drop it (it takes
            // no voucher that spreads), and so does an evaluation below that finds it does not.
            let one_statement = |client: &mut pgrx::spi::SpiClient<'_>,
                                 forget: bool|
             -> Result<Option<RedeemRow>> {
                let spread = hot::is_spread(tenant, &req.code);
                if spread {
                    if let Some(r) = spread_claim(client)? {
                        return Ok(Some(r));
                    }
                    if forget {
                        hot::remember_spread(tenant, &req.code, false);
                    }
                }
                let made = fast_claim(client)?;
                if spread && made.is_some() {
                    hot::remember_spread(tenant, &req.code, false);
                }
                Ok(made)
            };
            // Where the direct writer will write the rows, a code not known to spread takes the
            // evaluated path below: the code and its campaign by index probes (lookup::find), the
            // customer found and locked by its index (find_or_create, lookup::lock_customer),
            // then the claim alone. With neither look-up a statement, that is less work than
            // the one-statement claim, whose start-up was most of its cost (issue 17).
            let evaluated_first =
                !cluster && !hot::is_spread(tenant, &req.code) && Writer::likely(tenant);
            // A customer the index probe does not find is created first (find_or_create
            // below), then claimed for: not a claim that would find no customer before it.
            let new_customer = !cluster
                && !evaluated_first
                && index
                    .as_ref()
                    .is_some_and(|i| super::lookup::customer_exists(tenant, i) == Some(false));
            if !cluster && !new_customer && !evaluated_first {
                if let Some(r) = one_statement(client, index.is_none())? {
                    return Ok(r);
                }
            }

            // The customer, created encrypted if new. A claim above that matched nothing because
            // the customer did not exist yet is made again now that it does, and so is the claim
            // skipped above for a customer that looked new (made meanwhile by a concurrent call,
            // it is found here).
            let cust = match req.customer {
                Some(c) => {
                    let (id, created) = crate::crypto::customers::find_or_create(
                        client,
                        &ctx.tenant,
                        c,
                        index.clone(),
                        new_customer,
                    )?;
                    known_customer = (!created).then_some(id);
                    if (created || new_customer) && !cluster && !evaluated_first {
                        if let Some(r) = one_statement(client, true)? {
                            return Ok(r);
                        }
                    }
                    Some(id)
                }
                None => None,
            };

            // The code was refused, or its campaign limits redemptions per customer: evaluate it
            // to say why, or to claim the customer's allowance first.
            // (the probes read as the statement would: after a command counter increment, on a
            // fresh snapshot, this transaction having its id)
            let mut tid = None;
            let found = match super::lookup::find(tenant, &req.code) {
                Found::Row(columns) => {
                    tid = columns.tid;
                    Some(voucher_of(&req, *columns, |campaign, customer| {
                        used(client, tenant, campaign, customer, true)
                    }))
                }
                Found::NoSuchCode => None,
                Found::Fallback => evaluate(client, tenant, &req, true),
            };
            let (v, discount, spend) = match judge(found, &req, true)? {
                Verdict::Valid { v, discount, spend } => (v, discount, spend),
                Verdict::Refused {
                    sqlstate: "VC001", ..
                } if looks_mistyped(client, tenant, &req.code) => {
                    return Err(VoucherError::rule_with_hint(
                        "VC001",
                        MISTYPED,
                        "check the code for a mistyped character",
                    ));
                }
                Verdict::Refused { sqlstate, .. } => return Err(VoucherError::rule(sqlstate)),
            };

            if !cluster {
                let spreads = hot::spreads(&v);
                hot::remember_spread(tenant, &req.code, spreads);
                if spreads {
                    if let Some(r) = spread_claim(client)? {
                        return Ok(r);
                    }
                    return Err(refusal_after_miss(client, tenant, &req));
                }
            }

            if let (Some(limit), Some(cust)) = (v.per_customer_limit, cust) {
                let claimed = run(
                    client,
                    |s| &mut s.usage_claim,
                    || {
                        "INSERT INTO voucher.customer_usage AS u (tenant_id, campaign_id, customer_id, used) \
                         VALUES ($1, $2, $3, 1) \
                         ON CONFLICT (tenant_id, campaign_id, customer_id) \
                         DO UPDATE SET used = u.used + 1 WHERE u.used < $4 RETURNING used"
                            .into()
                    },
                    &[uuid, uuid, uuid, pg_sys::INT4OID],
                    true,
                    &[
                        tenant.into(),
                        v.campaign_id.into(),
                        cust.into(),
                        limit.into(),
                    ],
                );
                if claimed.is_empty() {
                    return Err(VoucherError::rule("VC005"));
                }
            }

            // The claim and its record, one statement: a conditional UPDATE (a concurrent redeemer
            // that got there first makes it match no row, and a fresh evaluation says why) feeding
            // the INSERT of the redemption.
            let discount = discount.unwrap_or_else(|| AnyNumeric::from(0));
            if cluster {
                let claim = crate::scale::redeem::Claim {
                    tenant,
                    voucher_id: v.voucher_id,
                    redemption_limit: v.redemption_limit,
                    spend: spend.clone(),
                    redemption_id,
                    campaign_id: v.campaign_id,
                    customer: cust,
                    order_id,
                    order_amount: req.order_amount.clone(),
                    discount: discount.clone(),
                    idempotency_key,
                    request_hash: hash.clone(),
                    metadata: meta_ct.clone(),
                    key_id: meta_key,
                    actor: actor.as_str(),
                    actor_json: actor_json.as_str(),
                };
                return match crate::scale::redeem::claim(client, &claim) {
                    Some(balance_after) => {
                        Ok((redemption_id, v.voucher_id, discount, balance_after, false))
                    }
                    None => Err(refusal_after_miss(client, tenant, &req)),
                };
            }
            let claim_types = [
                uuid,
                uuid,
                pg_sys::INT4OID,
                numeric,
                uuid,
                uuid,
                uuid,
                text,
                numeric,
                numeric,
                text,
                pg_sys::BYTEAOID,
                pg_sys::BYTEAOID,
                text,
                text,
                pg_sys::INT4OID,
                pg_sys::JSONBOID,
            ];
            let claim_args: [DatumWithOid; 17] = [
                tenant.into(),
                v.voucher_id.into(),
                v.redemption_limit.into(),
                spend.clone().into(),
                redemption_id.into(),
                v.campaign_id.into(),
                cust.into(),
                order_id.into(),
                req.order_amount.clone().into(),
                discount.clone().into(),
                idempotency_key.into(),
                hash.clone().into(),
                meta_ct.clone().into(),
                actor.as_str().into(),
                actor_json.as_str().into(),
                meta_key.into(),
                actor_jsonb(),
            ];
            // (the claim itself without a statement where claim.rs can: the direct writer's
            // tables are open by then)
            let made = match Writer::open(tenant) {
                Some(w) => {
                    match claim::claim(
                        tenant,
                        v.voucher_id,
                        v.redemption_limit,
                        spend.as_ref(),
                        tid,
                    ) {
                        Claim::Claimed(balance_after) => Some(write(
                            w,
                            Claimed {
                                voucher_id: v.voucher_id,
                                campaign_id: v.campaign_id,
                                customer_id: cust,
                                amount: spend.clone(),
                                discount: discount.clone(),
                                balance_after,
                                use_slot: None,
                            },
                        )?),
                        Claim::Missed => {
                            w.close();
                            None
                        }
                        Claim::Fallback => record(
                            w,
                            run(
                                client,
                                |s| &mut s.claim_direct,
                                claim_direct_sql,
                                &claim_types,
                                true,
                                &claim_args,
                            ),
                        )?,
                    }
                }
                None => {
                    let claimed = run(
                        client,
                        |s| &mut s.claim,
                        claim_sql,
                        &claim_types,
                        true,
                        &claim_args,
                    );
                    (!claimed.is_empty()).then(|| {
                        let balance_after = claimed.first().get::<AnyNumeric>(3).ok().flatten();
                        (redemption_id, v.voucher_id, discount, balance_after, false)
                    })
                }
            };
            made.ok_or_else(|| refusal_after_miss(client, tenant, &req))
        })
    });
    // A failed look-up counts towards a lock-out, whatever happens to this transaction.
    if let Err(VoucherError::Rule {
        sqlstate: "VC001", ..
    }) = &outcome
    {
        guard.failed(&ctx)?;
    }
    // A refused redemption is recorded although the error will roll this transaction back.
    if let Err(VoucherError::Rule { sqlstate, .. }) = &outcome {
        // the customer's source_id is personal data: encrypted under the customer's own key
        // (crypto) before the row is hashed; a customer this failed call created is not named
        let customer = match (req.customer, known_customer) {
            (Some(c), Some(id)) => as_definer(|| {
                Spi::connect_mut(|client| {
                    crate::crypto::customers::seal_for_audit(
                        client,
                        &ctx.tenant,
                        id,
                        &serde_json::json!({ "customer": c }),
                    )
                })
            })
            .unwrap_or(serde_json::Value::Null),
            (Some(_), None) => serde_json::json!({ "new_customer": true }),
            (None, _) => serde_json::Value::Null,
        };
        audit::write_durably(Event {
            tenant: ctx.tenant,
            actor: context::actor_json(Some(&ctx)),
            action: "redemption.failed",
            object_type: Some("voucher"),
            object_id: None,
            details: serde_json::json!({
                "code": req.code, "sqlstate": sqlstate,
                "reason": crate::common::error::entry(sqlstate).map(|e| e.message),
                "customer": customer, "order_id": order_id,
            }),
            at: Some(unsafe { pg_sys::GetCurrentTimestamp() }),
        });
    }
    outcome
}

/// Redeems a code atomically; raises on failure. `amount` spends from a gift card.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)] // the SQL signature of ../shared/API.md
fn redeem(
    code: Option<&str>,
    customer: default!(Option<&str>, "NULL"),
    order_amount: default!(Option<AnyNumeric>, "NULL"),
    amount: default!(Option<AnyNumeric>, "NULL"),
    order_id: default!(Option<&str>, "NULL"),
    idempotency_key: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    client: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(redemption_id, pgrx::Uuid),
        name!(voucher_id, pgrx::Uuid),
        name!(discount, AnyNumeric),
        name!(balance_after, Option<AnyNumeric>),
        name!(replayed, bool),
    ),
> {
    TableIterator::once(api(|| {
        redeem_impl(
            code,
            customer,
            order_amount,
            amount,
            order_id,
            idempotency_key,
            metadata,
            client,
        )
    }))
}
