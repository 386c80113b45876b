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
use crate::codes::probe::CodeIndex;
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::Event;
use crate::common::gucs;
use crate::common::rng;
use crate::common::spi::without_seqscans;
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;

/// Most codes one call may generate or preview.
pub const MAX_PER_CALL: i64 = 10_000_000;
/// Codes inserted per statement: bounds memory whatever the count.
const CHUNK: usize = 10_000;
/// First key of the advisory locks that serialize code generation within a tenant.
const LOCK_CLASS: i32 = 0x5643_4f44; // "VCOD"
/// Inserts a chunk of drawn codes (those the tenant holds already taken out).
const INSERT_SQL: &str =
    "INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code, display, balance) \
     SELECT $1, u.id, $2, u.code, u.display, $3 \
       FROM unnest($4::uuid[], $5::text[], $6::text[]) AS u(id, code, display)";

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

/// The campaign codes are about to be inserted for, key-share locked until the end of the
/// transaction: voucher.code has no foreign key to voucher.campaign (its check was a third of a
/// generated code's cost, issue 17), so this one lock is what keeps the campaign from being
/// deleted or re-keyed under the new codes, as the key's per-row check did (sql/codes.sql,
/// `_codes_keep_refs`). A campaign deleted by a transaction that commits while we wait is
/// "no such campaign".
pub(super) fn load_campaign(
    client: &mut SpiClient<'_>,
    tenant: [u8; 16],
    campaign: pgrx::Uuid,
) -> Result<CampaignCodes> {
    let rows = client
        .update(
            "SELECT code_pattern, code_charset, code_prefix, code_postfix, code_check_char, \
                    code_shape, gift_balance \
               FROM voucher.campaign WHERE tenant_id = $1 AND campaign_id = $2 FOR KEY SHARE",
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

/// The codes of a shape the tenant already has (every campaign of the shape counts against
/// `voucher.max_code_space_fill`). Reads each of them: O(the tenant's codes of the shape).
fn count_of_shape(client: &SpiClient<'_>, tenant: pgrx::Uuid, shape_key: &str) -> u64 {
    client
        .select(
            "SELECT count(*) FROM voucher.code v JOIN voucher.campaign c USING (tenant_id, campaign_id) \
              WHERE v.tenant_id = $1 AND c.tenant_id = $1 AND c.code_shape = $2",
            None,
            &[tenant.into(), shape_key.into()],
        )
        .expect("count of codes")
        .first()
        .get_one::<i64>()
        .expect("count")
        .unwrap_or(0) as u64
}

/// At least as many rows as `voucher.code` holds, every tenant and every row version included,
/// read from its size alone: its pages times the most tuples a heap page can hold (a 24-byte
/// page header; per tuple a 4-byte line pointer and a header of at least 24 bytes, PostgreSQL's
/// MaxHeapTuplesPerPage). Every row a snapshot can see is on a page counted here. When even this
/// many codes of the shape would leave the request feasible, the exact count is not needed.
/// None under Citus, where the rows live in the workers' shards.
fn codes_bound(client: &SpiClient<'_>) -> Option<u64> {
    if crate::scale::cluster::active() {
        return None;
    }
    client
        .select(
            "SELECT pg_catalog.pg_relation_size('voucher.code'::regclass, 'main') / s.b * ((s.b - 24) / 28) \
               FROM (SELECT pg_catalog.current_setting('block_size')::bigint AS b) s",
            None,
            &[],
        )
        .expect("size of voucher.code")
        .first()
        .get_one::<i64>()
        .expect("bound")
        .map(|n| n as u64)
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
            let fill = gucs::MAX_CODE_SPACE_FILL.get();
            // The exact count reads every code of the shape in the tenant: only when the
            // table could hold enough of them to make the request infeasible.
            let existing = if codes_bound(client)
                .is_some_and(|bound| c.shape.check_feasible(count, bound, fill).is_ok())
            {
                None
            } else {
                let n = count_of_shape(client, t, &c.shape_key);
                c.shape.check_feasible(count, n, fill)?;
                Some(n)
            };
            // Codes of other shapes, or imported ones, may still collide: probe each new code
            // (insert_drawn) unless the tenant has no codes at all.
            let probe = match existing {
                Some(n) if n > 0 => true,
                _ => without_seqscans(|| {
                    !client
                        .select(
                            "SELECT 1 FROM voucher.code WHERE tenant_id = $1 LIMIT 1",
                            None,
                            &[t.into()],
                        )
                        .expect("any code")
                        .is_empty()
                }),
            };
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
    let citus = crate::scale::cluster::active();
    let insert = client
        .prepare_mut(
            INSERT_SQL,
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
    // A tenant that has codes: each drawn code is probed in the unique index (probe.rs); under
    // Citus, or without that index, looked up with a statement.
    let index = if probe && !citus {
        CodeIndex::resolve()
    } else {
        None
    };
    let lookup = (probe && index.is_none()).then(|| {
        client
            .prepare(
                "SELECT code FROM voucher.code WHERE tenant_id = $1 AND code = ANY($2)",
                &[
                    pgrx::Uuid::type_oid().into(),
                    Vec::<String>::type_oid().into(),
                ],
            )
            .expect("lookup prepares")
    });
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
        let added = unsafe {
            let added = chunk_memory.switch_to(|_| {
                let taken: HashSet<String> = if let Some(index) = &index {
                    index.taken(tenant, &codes)
                } else if let Some(lookup) = &lookup {
                    let taken = client
                        .select(lookup, None, &[tenant.into(), codes.clone().into()])
                        .expect("lookup runs")
                        .filter_map(|r| r.get::<String>(1).ok().flatten())
                        .collect();
                    // the result table lives in SPI's own context until the connection ends
                    pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
                    taken
                } else {
                    HashSet::new()
                };
                if !taken.is_empty() {
                    let mut keep = codes.iter().map(|c| !taken.contains(c));
                    displays.retain(|_| keep.next().unwrap());
                    codes.retain(|c| !taken.contains(c));
                }
                let ids: Vec<pgrx::Uuid> = codes
                    .iter()
                    .map(|_| pgrx::Uuid::from_bytes(rng::uuid_v7()))
                    .collect();
                if citus {
                    // scale: Citus runs INSERT ... SELECT as a COPY, which RLS refuses
                    crate::scale::cluster::insert_codes(
                        client, tenant, campaign, &balance, &ids, &codes, &displays,
                    );
                    return codes.len() as u64;
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
                codes.len() as u64
            });
            chunk_memory.reset();
            added
        };
        inserted += added;
    }
    Ok(inserted)
}

/// Generates `count` unique codes for a campaign; returns how many were inserted.
#[pg_extern(volatile, parallel_unsafe)]
fn generate_codes(campaign: Option<pgrx::Uuid>, count: Option<i32>) -> i64 {
    api(|| generate_codes_impl(campaign, count))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Rows and index entries read from voucher.code (the table and each of its indexes) in
    /// this transaction so far.
    fn code_reads() -> i64 {
        Spi::get_one::<i64>(
            "SELECT sum(pg_stat_get_xact_tuples_returned(c.oid) \
                        + pg_stat_get_xact_tuples_fetched(c.oid))::bigint \
               FROM pg_class c \
              WHERE c.oid = 'voucher.code'::regclass \
                 OR c.oid IN (SELECT indexrelid FROM pg_index \
                               WHERE indrelid = 'voucher.code'::regclass)",
        )
        .unwrap()
        .unwrap()
    }

    /// This session acts with an admin key of a new tenant `name`.
    fn admin_of_new_tenant(name: &str) {
        Spi::run_with_args(
            "SELECT voucher.authenticate(voucher.create_api_key('admin', \
                    tenant => voucher.create_tenant($1)), session => true)",
            &[name.into()],
        )
        .unwrap();
    }

    fn generate(campaign: pgrx::Uuid, count: i32) -> i64 {
        Spi::get_one_with_args::<i64>(
            "SELECT voucher.generate_codes($1, $2)",
            &[campaign.into(), count.into()],
        )
        .unwrap()
        .unwrap()
    }

    /// A tenant holding one imported code, analyzed then (as autovacuum does while a tenant is
    /// small): generating 30,000 codes looks each one up by the unique index instead of reading
    /// the tenant's codes once per chunk of 10,000 (30,002 entries read before the fix), and a
    /// second, small call neither counts the tenant's 30,001 codes for the feasibility check
    /// nor scans them for collisions.
    #[pg_test]
    fn generating_into_a_tenant_that_has_codes_does_not_read_its_codes() {
        admin_of_new_tenant("grown");
        let campaign = Spi::get_one::<pgrx::Uuid>("SELECT voucher.create_campaign('grown')")
            .unwrap()
            .unwrap();
        Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT voucher.add_code($1, 'imported-1')",
            &[campaign.into()],
        )
        .unwrap();
        Spi::run("ANALYZE voucher.code").unwrap();

        let before = code_reads();
        assert_eq!(generate(campaign, 30_000), 30_000);
        let first = code_reads() - before;
        assert!(first < 100, "generate_codes(30000) read {first} codes");

        let before = code_reads();
        assert_eq!(generate(campaign, 10), 10);
        let second = code_reads() - before;
        assert!(second < 100, "generate_codes(10) read {second} codes");

        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(DISTINCT code) FROM voucher.code \
                  WHERE tenant_id = voucher.current_tenant()"
            ),
            Ok(Some(30_011))
        );
    }

    /// The probes find every code the tenant holds, whatever campaign it belongs to: with 90
    /// of the 100 codes of `##` over digits imported into another campaign, the 10 generated
    /// are exactly the 10 left.
    #[pg_test]
    fn generating_skips_every_code_the_tenant_holds() {
        admin_of_new_tenant("full");
        Spi::run(
            "SELECT voucher.add_code(voucher.create_campaign('imported'), lpad(n::text, 2, '0')) \
               FROM generate_series(0, 89) n",
        )
        .unwrap();
        let campaign = Spi::get_one::<pgrx::Uuid>(
            "SELECT voucher.create_campaign('digits', code_pattern => '##', \
                                            code_charset => 'numbers')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(generate(campaign, 10), 10);
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT string_agg(code, ',' ORDER BY code) FROM voucher.code \
                  WHERE campaign_id = $1",
                &[campaign.into()],
            ),
            Ok(Some("90,91,92,93,94,95,96,97,98,99".into()))
        );
    }
}
