//! Voucher codes: preview, bulk generation, import, normalization
//! (../shared/API.md, "Campaigns and codes").

use std::collections::HashSet;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgMemoryContexts;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::audit;
use crate::codes::pattern::{self, group, Shape};
use crate::codes::permute::Permutation;
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::Event;
use crate::common::gucs;
use crate::common::rng;
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;

/// Most codes one call may generate or preview.
pub const MAX_PER_CALL: i64 = 10_000_000;
/// Codes inserted per statement: bounds memory whatever the count.
const CHUNK: usize = 10_000;
/// First key of the advisory locks that serialize code generation within a tenant.
const LOCK_CLASS: i32 = 0x5643_4f44; // "VCOD"

fn check_count(count: Option<i32>) -> Result<u64> {
    let count = count.ok_or(VoucherError::NullArgument("count"))? as i64;
    if !(1..=MAX_PER_CALL).contains(&count) {
        return Err(VoucherError::invalid_hint(
            format!(
                "count must be between 1 and {}",
                group(MAX_PER_CALL as u128)
            ),
            "generate larger batches in several calls",
        ));
    }
    Ok(count as u64)
}

/// The pattern's codes, in a random order that never repeats: `count` of them from a random
/// starting point of a fresh keyed permutation.
struct Draw {
    shape: Shape,
    perm: Permutation,
    next: u64,
    left: u64,
    extra: ChaCha20Rng,
    display: String,
    canonical: String,
}

impl Draw {
    fn new(shape: Shape) -> Draw {
        let perm = Permutation::new(shape.domain(), rng::os_bytes::<16>());
        let mut extra = ChaCha20Rng::from_seed(rng::os_bytes::<32>());
        let next = extra.random_range(0..perm.domain());
        let left = perm.domain();
        Draw {
            shape,
            perm,
            next,
            left,
            extra,
            display: String::new(),
            canonical: String::new(),
        }
    }

    /// Renders the next code into `self.display` / `self.canonical`; false once the whole
    /// space has been walked.
    fn advance(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        let index = self.perm.apply(self.next);
        self.next = if self.next + 1 == self.perm.domain() {
            0
        } else {
            self.next + 1
        };
        self.shape.render(
            index,
            &mut self.extra,
            &mut self.display,
            &mut self.canonical,
        );
        true
    }
}

fn shape_of(
    pattern: Option<&str>,
    charset: Option<&str>,
    prefix: Option<&str>,
    postfix: Option<&str>,
    check_char: Option<bool>,
) -> Result<Shape> {
    Shape::parse(
        pattern.ok_or(VoucherError::NullArgument("pattern"))?,
        charset.ok_or(VoucherError::NullArgument("charset"))?,
        prefix.unwrap_or(""),
        postfix.unwrap_or(""),
        check_char.unwrap_or(false),
    )
}

/// The canonical form used for lookup: upper case, spaces and dashes removed.
#[pg_extern(immutable, strict, parallel_safe)]
fn normalize_code(code: &str) -> String {
    pattern::normalize(code)
}

/// Generates `count` codes of a pattern and inserts nothing.
#[pg_extern(volatile, parallel_safe)]
fn preview_codes(
    count: Option<i32>,
    pattern: default!(Option<&str>, "'########'"),
    charset: default!(Option<&str>, "'unambiguous'"),
    prefix: default!(Option<&str>, "''"),
    postfix: default!(Option<&str>, "''"),
    check_char: default!(Option<bool>, false),
) -> SetOfIterator<'static, String> {
    let (shape, count) = api(|| {
        let shape = shape_of(pattern, charset, prefix, postfix, check_char)?;
        let count = check_count(count)?;
        shape.check_feasible(count, 0, gucs::MAX_CODE_SPACE_FILL.get())?;
        Ok((shape, count))
    });
    let mut draw = Draw::new(shape);
    SetOfIterator::new((0..count).map_while(move |_| draw.advance().then(|| draw.display.clone())))
}

/// Internal, for create_campaign: validates a code pattern and returns its shape key.
#[pg_extern(immutable, parallel_safe, name = "_code_shape")]
fn code_shape(
    pattern: Option<&str>,
    charset: Option<&str>,
    prefix: Option<&str>,
    postfix: Option<&str>,
    check_char: Option<bool>,
) -> String {
    api(|| Ok(shape_of(pattern, charset, prefix, postfix, check_char)?.key()))
}

fn lock_key(tenant: [u8; 16]) -> i32 {
    tenant.chunks(4).fold(0i32, |acc, c| {
        acc ^ i32::from_le_bytes(c.try_into().unwrap())
    })
}

/// Serializes generation within a tenant (`shared` for single imports, which only conflict on
/// an exact duplicate and the unique index settles that).
pub(super) fn lock_tenant_codes(client: &mut SpiClient<'_>, tenant: [u8; 16], shared: bool) {
    let sql = if shared {
        "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2)"
    } else {
        "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)"
    };
    client
        .update(sql, None, &[LOCK_CLASS.into(), lock_key(tenant).into()])
        .expect("advisory lock");
}

pub(super) struct CampaignCodes {
    pub(super) shape: Shape,
    pub(super) shape_key: String,
    pub(super) gift_balance: Option<AnyNumeric>,
}

pub(super) fn load_campaign(
    client: &SpiClient<'_>,
    tenant: [u8; 16],
    campaign: pgrx::Uuid,
) -> Result<CampaignCodes> {
    let rows = client
        .select(
            "SELECT code_pattern, code_charset, code_prefix, code_postfix, code_check_char, \
                    code_shape, gift_balance \
               FROM voucher.campaign WHERE tenant_id = $1 AND campaign_id = $2",
            Some(1),
            &[pgrx::Uuid::from_bytes(tenant).into(), campaign.into()],
        )
        .expect("campaign lookup");
    let row = rows.first();
    if row.is_empty() {
        return Err(VoucherError::invalid("no such campaign"));
    }
    let text = |i: usize| row.get::<String>(i).expect("column").unwrap_or_default();
    let shape = Shape::parse(
        &text(1),
        &text(2),
        &text(3),
        &text(4),
        row.get::<bool>(5).expect("column").unwrap_or(false),
    )?;
    Ok(CampaignCodes {
        shape,
        shape_key: text(6),
        gift_balance: row.get::<AnyNumeric>(7).expect("column"),
    })
}

fn generate_codes_impl(campaign: Option<pgrx::Uuid>, count: Option<i32>) -> Result<i64> {
    let ctx = context::authorize(Action::ManageCampaigns)?;
    let campaign = campaign.ok_or(VoucherError::NullArgument("campaign"))?;
    let count = check_count(count)?;
    let tenant = ctx.tenant;
    let inserted = as_definer(|| {
        Spi::connect_mut(|client| -> Result<u64> {
            let c = load_campaign(client, tenant, campaign)?;
            lock_tenant_codes(client, tenant, false);
            let t = pgrx::Uuid::from_bytes(tenant);
            let existing = client
                .select(
                    "SELECT count(*) FROM voucher.code v JOIN voucher.campaign c USING (tenant_id, campaign_id) \
                      WHERE v.tenant_id = $1 AND c.tenant_id = $1 AND c.code_shape = $2",
                    None,
                    &[t.into(), c.shape_key.as_str().into()],
                )
                .expect("count of codes")
                .first()
                .get_one::<i64>()
                .expect("count")
                .unwrap_or(0) as u64;
            c.shape
                .check_feasible(count, existing, gucs::MAX_CODE_SPACE_FILL.get())?;
            // Codes of other shapes, or imported ones, may still collide: look each new code up
            // unless the tenant has no codes at all.
            let probe = existing > 0
                || !client
                    .select(
                        "SELECT 1 FROM voucher.code WHERE tenant_id = $1 LIMIT 1",
                        None,
                        &[t.into()],
                    )
                    .expect("any code")
                    .is_empty();
            insert_drawn(
                client,
                t,
                campaign,
                c.gift_balance,
                Draw::new(c.shape),
                count,
                probe,
            )
        })
    })?;
    audit::write(&Event {
        tenant,
        actor: context::actor_json(Some(&ctx)),
        action: "codes.generated",
        object_type: Some("campaign"),
        object_id: Some(campaign.to_string()),
        details: serde_json::json!({ "count": inserted }),
        at: None,
    });
    Ok(inserted as i64)
}

fn insert_drawn(
    client: &mut SpiClient<'_>,
    tenant: pgrx::Uuid,
    campaign: pgrx::Uuid,
    balance: Option<AnyNumeric>,
    mut draw: Draw,
    count: u64,
    probe: bool,
) -> Result<u64> {
    let insert = client
        .prepare_mut(
            "INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code, display, balance) \
             SELECT $1, u.id, $2, u.code, u.display, $3 \
               FROM unnest($4::uuid[], $5::text[], $6::text[]) AS u(id, code, display)",
            &[
                pgrx::Uuid::type_oid().into(),
                pgrx::Uuid::type_oid().into(),
                AnyNumeric::type_oid().into(),
                Vec::<pgrx::Uuid>::type_oid().into(),
                Vec::<String>::type_oid().into(),
                Vec::<String>::type_oid().into(),
            ],
        )
        .expect("insert prepares");
    let lookup = client
        .prepare(
            "SELECT code FROM voucher.code WHERE tenant_id = $1 AND code = ANY($2)",
            &[
                pgrx::Uuid::type_oid().into(),
                Vec::<String>::type_oid().into(),
            ],
        )
        .expect("lookup prepares");
    // The arrays handed to each statement are palloc'd: built in a context reset per chunk,
    // so a million codes cost the memory of one chunk, not of all of them.
    let mut chunk_memory = PgMemoryContexts::new("voucher generate_codes chunk");
    let mut inserted = 0u64;
    let mut codes: Vec<String> = Vec::with_capacity(CHUNK);
    let mut displays: Vec<Option<String>> = Vec::with_capacity(CHUNK);
    while inserted < count {
        codes.clear();
        displays.clear();
        let want = ((count - inserted) as usize).min(CHUNK);
        while codes.len() < want && draw.advance() {
            displays.push((draw.display != draw.canonical).then(|| draw.display.clone()));
            codes.push(draw.canonical.clone());
        }
        if codes.is_empty() {
            return Err(VoucherError::rule_with_hint(
                "VC011",
                format!(
                    "every code of the pattern is taken: {} inserted of {} requested",
                    group(inserted as u128),
                    group(count as u128)
                ),
                "use a longer pattern",
            ));
        }
        // SAFETY: nothing allocated in chunk_memory outlives this chunk (the Rust vectors are
        // Rust's; the statements' results are read before the reset).
        unsafe {
            chunk_memory.switch_to(|_| {
                if probe {
                    let taken: HashSet<String> = client
                        .select(&lookup, None, &[tenant.into(), codes.clone().into()])
                        .expect("lookup runs")
                        .filter_map(|r| r.get::<String>(1).ok().flatten())
                        .collect();
                    // the result table lives in SPI's own context until the connection ends
                    pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
                    if !taken.is_empty() {
                        let mut keep = codes.iter().map(|c| !taken.contains(c));
                        displays.retain(|_| keep.next().unwrap());
                        codes.retain(|c| !taken.contains(c));
                    }
                }
                let ids: Vec<pgrx::Uuid> = codes
                    .iter()
                    .map(|_| pgrx::Uuid::from_bytes(rng::uuid_v7()))
                    .collect();
                if crate::scale::cluster::active() {
                    // scale: Citus runs INSERT ... SELECT as a COPY, which RLS refuses
                    crate::scale::cluster::insert_codes(
                        client, tenant, campaign, &balance, &ids, &codes, &displays,
                    );
                    return;
                }
                let args: [DatumWithOid; 6] = [
                    tenant.into(),
                    campaign.into(),
                    balance.clone().into(),
                    ids.into(),
                    codes.clone().into(),
                    displays.clone().into(),
                ];
                client.update(&insert, None, &args).expect("insert runs");
            });
            chunk_memory.reset();
        }
        inserted += codes.len() as u64;
    }
    Ok(inserted)
}

/// Generates `count` unique codes for a campaign; returns how many were inserted.
#[pg_extern(volatile, parallel_unsafe)]
fn generate_codes(campaign: Option<pgrx::Uuid>, count: Option<i32>) -> i64 {
    api(|| generate_codes_impl(campaign, count))
}
