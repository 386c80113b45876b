//! The claim of an evaluated voucher without a statement: what
//! `UPDATE voucher.code v SET redeemed_count = v.redeemed_count + 1, balance = v.balance - $spend
//!   WHERE v.tenant_id = $1 AND v.voucher_id = $2 AND v.active
//!     AND ($limit IS NULL OR v.redeemed_count < $limit)
//!     AND ($spend IS NULL OR v.balance >= $spend) RETURNING v.balance`
//! (statements.rs, `claim_direct_sql`) does, done the way PostgreSQL's logical replication
//! apply worker updates a row: the row found by its primary key on a fresh snapshot, locked
//! (waiting for a concurrent redemption as the UPDATE waits, and then taking the newest version
//! of the row, as the UPDATE's re-check does), the conditions checked on the locked version, the
//! new version written with the table's constraints and the domains' checks, its index entries
//! when the update is not HOT.
//!
//! Why: after the redemption's rows and its look-ups went without statements (`direct`,
//! `lookup`), this UPDATE was the largest statement left in a shop redemption: about 150k
//! instructions of 760k (issue 17, callgrind), most of it the executor's start and end for one
//! row.
//!
//! What the statement would check is checked here, or `claim` answers `Fallback` and the
//! statement runs (before anything was changed):
//! - row-level security: the table's only policy is the verified `tenant_isolation` (USING and
//!   WITH CHECK), the row's tenant is the context's, and the update does not change it;
//! - privileges: SELECT on the table, UPDATE on `redeemed_count` and `balance`;
//! - triggers: none BEFORE UPDATE, none per statement, no transition tables, no rule; every
//!   AFTER UPDATE row trigger is one that cannot fire for this update, verified when resolved:
//!   an `UPDATE OF` columns this update does not change, or one whose WHEN is exactly
//!   `NOT voucher._by_definer()` while the current user is voucher_definer (the direct-DML audit
//!   triggers, sql/audit.sql);
//! - the columns' types: `redeemed_count` a domain over integer or integer, `balance` over
//!   numeric; each new value passes its domain's checks, as the UPDATE's coercion checks them;
//! - READ COMMITTED (the statement's REPEATABLE READ behaviour, a serialization failure on a
//!   concurrent update, is left to it), not read-only, not Citus, the context's own tenant.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use super::lookup::{self, Policy};
use crate::common::index::{attnum, first_by_index, lock_newest, unique_index, voucher_table};

/// What the claim did.
pub enum Claim {
    /// a use (and the spend) claimed: the balance after it
    Claimed(Option<AnyNumeric>),
    /// no such row, or a condition fails on its newest version: nothing changed
    Missed,
    /// the statement must answer (see the module comment); nothing changed
    Fallback,
}

#[derive(Clone, Copy)]
struct Code {
    rel: pg_sys::Oid,
    /// the primary key (tenant_id, voucher_id)
    index: pg_sys::Oid,
    tenant_id: i16,
    voucher_id: i16,
    active: i16,
    redeemed_count: i16,
    balance: i16,
    /// the declared types of redeemed_count and balance (domains, checked with domain_check)
    count_type: pg_sys::Oid,
    balance_type: pg_sys::Oid,
    policy: Policy,
}

thread_local! {
    static CODE: Cell<Option<Option<Code>>> = const { Cell::new(None) };
}

/// Forgets the resolution if `relid` is its table or index (InvalidOid: everything); called by
/// `lookup`'s relcache callback.
pub(super) fn forget(relid: pg_sys::Oid) {
    CODE.with(|k| lookup::forget_cached(k, relid, |c| [c.rel, c.index].contains(&relid)));
}

/// Forgets the resolution (`lookup::trim_policies` frees the policy copy it points to).
pub(super) fn forget_all() {
    CODE.with(|k| k.set(None));
}

/// The WHEN of the triggers that never fire for our own functions' changes.
const BY_DEFINER: &str = "(NOT voucher._by_definer())";

/// Every UPDATE trigger of the table is an AFTER ... FOR EACH ROW trigger without transition
/// tables that cannot fire for an update of `changed` columns made as voucher_definer.
unsafe fn triggers_stay_quiet(rel: pg_sys::Oid, changed: [i16; 2]) -> bool {
    // (read-only: no transaction id is assigned by this look-up)
    let ok = Spi::connect(|client| {
        client
            .select(
                "SELECT coalesce(bool_and(
                        (tgtype & 1) = 1 AND (tgtype & 66) = 0
                        AND tgoldtable IS NULL AND tgnewtable IS NULL
                        AND CASE WHEN cardinality(tgattr::int2[]) > 0
                                 THEN NOT (tgattr::int2[] && $2)
                                 ELSE tgqual IS NOT NULL AND pg_get_expr(tgqual, tgrelid) = $3
                            END), true)
                   FROM pg_catalog.pg_trigger
                  WHERE tgrelid = $1 AND (tgtype & 16) <> 0",
                Some(1),
                &[rel.into(), changed.to_vec().into(), BY_DEFINER.into()],
            )
            .and_then(|rows| rows.first().get_one::<bool>())
    });
    ok == Ok(Some(true))
}

/// voucher.code as the claim needs it, or None.
unsafe fn resolve() -> Option<Code> {
    let oid = voucher_table(c"code")?;
    let rel = pg_sys::table_open(oid, pg_sys::AccessShareLock as i32);
    let code = (|| {
        let class = (*rel).rd_rel;
        if (*class).relkind as u8 != pg_sys::RELKIND_RELATION || (*class).relispartition {
            return None;
        }
        let a = |n: &str| attnum(rel, n);
        let (tenant_id, voucher_id) = (a("tenant_id")?, a("voucher_id")?);
        let (redeemed_count, balance) = (a("redeemed_count")?, a("balance")?);
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let atts = (*desc).attrs.as_slice(natts);
        let type_of = |att: i16| atts[att as usize - 1].atttypid;
        let (count_type, balance_type) = (type_of(redeemed_count), type_of(balance));
        if pg_sys::getBaseType(count_type) != pg_sys::INT4OID
            || pg_sys::getBaseType(balance_type) != pg_sys::NUMERICOID
            || type_of(tenant_id) != pg_sys::UUIDOID
            || type_of(voucher_id) != pg_sys::UUIDOID
            || atts.iter().any(|x| x.attgenerated != 0)
            || !triggers_stay_quiet(oid, [redeemed_count, balance])
        {
            return None;
        }
        Some(Code {
            rel: oid,
            index: unique_index(rel, &[tenant_id, voucher_id])?,
            tenant_id,
            voucher_id,
            active: a("active")?,
            redeemed_count,
            balance,
            count_type,
            balance_type,
            policy: lookup::verified_policy(rel)?,
        })
    })();
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    code
}

fn resolved() -> Option<Code> {
    // SAFETY: catalog look-ups; a failure raises a normal ERROR.
    lookup::resolved_one(&CODE, || unsafe { resolve() })
}

/// The per-call checks of the module comment on the opened table.
unsafe fn may_update(rel: pg_sys::Relation, c: &Code) -> bool {
    let user = pg_sys::GetUserId();
    let update = |att: i16| {
        pg_sys::pg_attribute_aclcheck(c.rel, att, user, pg_sys::ACL_UPDATE as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    let triggers = (*rel).trigdesc;
    let loud = !triggers.is_null() && {
        let d = &*triggers;
        d.trig_update_before_row
            || d.trig_update_instead_row
            || d.trig_update_before_statement
            || d.trig_update_after_statement
            || d.trig_update_old_table
            || d.trig_update_new_table
    };
    CODE.with(|k| k.get()).is_some()
        && !loud
        && (*rel).rd_rules.is_null()
        && crate::tenancy::definer::by_definer()
        && pg_sys::pg_class_aclcheck(c.rel, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
        && update(c.redeemed_count)
        && update(c.balance)
        && lookup::policy_holds(rel, &c.policy)
}

/// What a claim asks for: a use of `voucher` of `tenant`, under `limit` uses, with `spend` of
/// its balance.
struct Want<'a> {
    tenant: &'a pgrx::Uuid,
    voucher: &'a pgrx::Uuid,
    limit: Option<i32>,
    spend: Option<&'a AnyNumeric>,
}

/// Claims a use of voucher `voucher` of `tenant` (and `spend` of its balance) if it is active,
/// under `limit` uses, and has the balance: see the module comment. Call as voucher_definer.
/// `at`: where this call's probe found the row (`lookup::find`, earlier in the transaction): it
/// is locked there, and the lock follows the row to the newest version a concurrent transaction
/// made (a version this transaction replaced: the statement answers), instead of finding it
/// again by the primary key. (That version cannot have been pruned meanwhile: it was visible to
/// a snapshot taken after the one the running statement holds, which keeps this backend's xmin.)
pub fn claim(
    tenant: pgrx::Uuid,
    voucher: pgrx::Uuid,
    limit: Option<i32>,
    spend: Option<&AnyNumeric>,
    at: Option<pg_sys::ItemPointerData>,
) -> Claim {
    lookup::trim_policies();
    // SAFETY: reads backend-local state.
    let plain = unsafe { !pg_sys::XactReadOnly } && lookup::snapshot_per_statement();
    if !plain || !lookup::may_probe(tenant) {
        return Claim::Fallback;
    }
    let Some(c) = resolved() else {
        return Claim::Fallback;
    };
    // SAFETY: the relation resolved above (forgotten on invalidation), opened with the lock an
    // UPDATE takes, kept to the end of the transaction; the checks run under that lock.
    unsafe {
        let rel = pg_sys::try_table_open(c.rel, pg_sys::RowExclusiveLock as i32);
        if rel.is_null() {
            return Claim::Fallback;
        }
        let out = if may_update(rel, &c) {
            pg_sys::CheckCmdReplicaIdentity(rel, pg_sys::CmdType::CMD_UPDATE);
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let want = Want {
                tenant: &tenant,
                voucher: &voucher,
                limit,
                spend,
            };
            let out = match at {
                Some(tid) => claim_at(rel, &c, tid, &want),
                None => claim_row(rel, &c, &want),
            };
            pg_sys::PopActiveSnapshot();
            out
        } else {
            Claim::Fallback
        };
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        out
    }
}

/// The value of attribute `att` of a slot whose attributes are all deformed.
unsafe fn value<T: FromDatum>(slot: *mut pg_sys::TupleTableSlot, att: i16) -> Option<T> {
    let i = att as usize - 1;
    T::from_datum(*(*slot).tts_values.add(i), *(*slot).tts_isnull.add(i))
}

/// Finds the row by the primary key, then as [`lock_and_claim`].
unsafe fn claim_row(rel: pg_sys::Relation, c: &Code, want: &Want<'_>) -> Claim {
    let key = want.voucher.into_datum().expect("a uuid datum");
    first_by_index(
        rel,
        c.index,
        pg_sys::RowExclusiveLock,
        want.tenant,
        key,
        pg_sys::F_UUID_EQ,
        |old, snapshot| lock_and_claim(rel, c, old, snapshot, want, Claim::Missed),
    )
    .unwrap_or(Claim::Missed)
}

/// Locks the row at `tid` (as a probe of this call found it), then as [`lock_and_claim`]. A row
/// that is not the voucher's there leaves the answer to the statement.
unsafe fn claim_at(
    rel: pg_sys::Relation,
    c: &Code,
    tid: pg_sys::ItemPointerData,
    want: &Want<'_>,
) -> Claim {
    let old = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    (*old).tts_tid = tid;
    let snapshot = pg_sys::GetActiveSnapshot();
    let out = lock_and_claim(rel, c, old, snapshot, want, Claim::Fallback);
    pg_sys::ExecDropSingleTupleTableSlot(old);
    out
}

/// Locks the row whose version `old` names NO KEY EXCLUSIVE (its newest version then in `old`)
/// and claims on it; `other` when the row locked is not the voucher's.
unsafe fn lock_and_claim(
    rel: pg_sys::Relation,
    c: &Code,
    old: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
    want: &Want<'_>,
    other: Claim,
) -> Claim {
    match lock_newest(
        rel,
        old,
        snapshot,
        pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
    ) {
        pg_sys::TM_Result::TM_Ok => {
            pg_sys::slot_getallattrs(old);
            let same = value::<pgrx::Uuid>(old, c.tenant_id).as_ref() == Some(want.tenant)
                && value::<pgrx::Uuid>(old, c.voucher_id).as_ref() == Some(want.voucher);
            if same {
                update_locked(rel, c, old, want.limit, want.spend)
            } else {
                other
            }
        }
        pg_sys::TM_Result::TM_Deleted => Claim::Missed,
        // (nothing changed yet: the statement decides, and raises what it raises)
        _ => Claim::Fallback,
    }
}

/// The UPDATE's conditions on the locked (newest) version in `old`, then the new version.
unsafe fn update_locked(
    rel: pg_sys::Relation,
    c: &Code,
    old: *mut pg_sys::TupleTableSlot,
    limit: Option<i32>,
    spend: Option<&AnyNumeric>,
) -> Claim {
    let count = value::<i32>(old, c.redeemed_count);
    let balance = value::<AnyNumeric>(old, c.balance);
    let matches = value::<bool>(old, c.active) == Some(true)
        && limit.is_none_or(|l| count.is_some_and(|n| n < l))
        && spend.is_none_or(|s| balance.as_ref().is_some_and(|b| b >= s));
    if !matches {
        return Claim::Missed;
    }
    let Some(count) = count.map(|n| n.checked_add(1)) else {
        return Claim::Missed; // (a NULL count matches no limit; the column is NOT NULL)
    };
    let Some(count) = count else {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            "integer out of range"
        );
    };
    let after = match (balance, spend) {
        (Some(b), Some(s)) => Some(b - s.clone()),
        _ => None,
    };
    // the new values through their domains' checks, as the UPDATE's coercion checks them
    let count_datum = count.into_datum().expect("an int4 datum");
    let after_datum = after.clone().into_datum();
    let mut extra: *mut std::ffi::c_void = std::ptr::null_mut();
    pg_sys::domain_check(
        count_datum,
        false,
        c.count_type,
        &mut extra,
        pg_sys::CurrentMemoryContext,
    );
    let mut extra: *mut std::ffi::c_void = std::ptr::null_mut();
    pg_sys::domain_check(
        after_datum.unwrap_or(pg_sys::Datum::from(0)),
        after_datum.is_none(),
        c.balance_type,
        &mut extra,
        pg_sys::CurrentMemoryContext,
    );
    // the new version: the locked one's values, the two counters replaced
    let natts = (*(*rel).rd_att).natts as usize;
    let new = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    for i in 0..natts {
        *(*new).tts_values.add(i) = *(*old).tts_values.add(i);
        *(*new).tts_isnull.add(i) = *(*old).tts_isnull.add(i);
    }
    let set = |att: i16, v: Option<pg_sys::Datum>| {
        let i = att as usize - 1;
        *(*new).tts_values.add(i) = v.unwrap_or(pg_sys::Datum::from(0));
        *(*new).tts_isnull.add(i) = v.is_none();
    };
    set(c.redeemed_count, Some(count_datum));
    set(c.balance, after_datum);
    pg_sys::ExecStoreVirtualTuple(new);
    let estate = pg_sys::CreateExecutorState();
    (*estate).es_snapshot = pg_sys::GetActiveSnapshot();
    let rri = super::direct::result_relation(rel);
    if !(*(*rel).rd_att).constr.is_null() {
        pg_sys::ExecConstraints(rri, new, estate);
    }
    let mut tid = (*old).tts_tid;
    let mut update_indexes = false;
    pg_sys::simple_table_tuple_update(
        rel,
        &mut tid,
        new,
        (*estate).es_snapshot,
        &mut update_indexes,
    );
    // the indexes opened only for an update that is not HOT (the counters are in no index:
    // almost every claim is HOT)
    if update_indexes {
        pg_sys::ExecOpenIndices(rri, false);
        if (*rri).ri_NumIndices > 0 {
            let recheck = pg_sys::ExecInsertIndexTuples(
                rri,
                new,
                estate,
                true,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::list_free(recheck);
        }
        pg_sys::ExecCloseIndices(rri);
    }
    pg_sys::ExecDropSingleTupleTableSlot(new);
    pg_sys::FreeExecutorState(estate);
    #[cfg(any(test, feature = "pg_test"))]
    CLAIMED.with(|n| n.set(n.get() + 1));
    Claim::Claimed(after)
}

#[cfg(any(test, feature = "pg_test"))]
thread_local! {
    /// Claims made here, for the tests that must know which path a call took.
    pub(super) static CLAIMED: Cell<u64> = const { Cell::new(0) };
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::AnyNumeric;

    use super::{claim, Claim, CLAIMED};
    use crate::redeem::lookup::tests::authenticate;
    use crate::tenancy::definer::as_definer;

    fn claimed() -> u64 {
        CLAIMED.with(|n| n.get())
    }

    fn show(c: Claim) -> String {
        match c {
            Claim::Claimed(b) => format!("claimed {}", b.map_or("-".into(), |b| b.to_string())),
            Claim::Missed => "missed".into(),
            Claim::Fallback => "fallback".into(),
        }
    }

    fn voucher(code: &str) -> pgrx::Uuid {
        Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT voucher_id FROM voucher.code WHERE code = '{code}'"
        ))
        .unwrap()
        .unwrap()
    }

    fn row(code: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT format('%s %s', redeemed_count, balance) FROM voucher.code WHERE code = '{code}'"
        ))
        .unwrap()
        .unwrap()
    }

    /// The claim counts a use under the limit and spends from a balance that has it, exactly
    /// as the UPDATE does, and changes nothing when a condition fails; another tenant's context,
    /// a BEFORE UPDATE trigger or an AFTER UPDATE trigger that could fire leave it to the
    /// statement; a domain's check applies to the new values.
    #[pg_test]
    fn the_claim_is_the_updates_claim() {
        let tenant = authenticate("claim");
        Spi::run(
            "SELECT voucher.add_code(voucher.create_campaign('two', redemption_limit => 2), 'TWO');
             SELECT voucher.add_code(voucher.create_campaign('gift', kind => 'gift_card', \
                    gift_balance => 50, redemption_limit => NULL), 'GIFT');
             SELECT voucher.add_code(voucher.create_campaign('off', redemption_limit => 9), 'OFF');
             SELECT voucher.set_voucher_active('OFF', false)",
        )
        .unwrap();
        let (two, gift, off) = (voucher("TWO"), voucher("GIFT"), voucher("OFF"));
        let spend = |s: i32| AnyNumeric::from(s);
        let go = |v, limit, s: Option<i32>| {
            show(as_definer(|| {
                claim(tenant, v, limit, s.map(spend).as_ref(), None)
            }))
        };
        let before = claimed();
        assert_eq!(go(two, Some(2), None), "claimed -");
        assert_eq!(go(two, Some(2), None), "claimed -");
        assert_eq!(go(two, Some(2), None), "missed");
        assert_eq!(row("TWO"), "2 ");
        assert_eq!(go(gift, None, Some(20)), "claimed 30");
        assert_eq!(go(gift, None, Some(40)), "missed");
        assert_eq!(row("GIFT"), "1 30");
        assert_eq!(go(off, Some(9), None), "missed");
        assert_eq!(go(pgrx::Uuid::from_bytes([1; 16]), None, None), "missed");
        assert_eq!(claimed(), before + 3);
        // through redeem: a gift card's spend
        Spi::run("SELECT voucher.redeem('GIFT', amount => 5)").unwrap();
        assert_eq!(row("GIFT"), "2 25");
        assert_eq!(claimed(), before + 4);
        // another tenant's context: not answered
        let other = pgrx::Uuid::from_bytes([9; 16]);
        assert_eq!(go_other(other, gift), "fallback");
        // a domain's check on the new value (as the UPDATE's coercion checks it): 23514
        Spi::run(
            "ALTER DOMAIN voucher.balance_left ADD CONSTRAINT above_20 CHECK (VALUE >= 20) NOT VALID;
             DO $$ BEGIN
                 PERFORM voucher.redeem('GIFT', amount => 10);
                 RAISE EXCEPTION 'the domain did not refuse the balance';
             EXCEPTION WHEN check_violation THEN NULL;
             END $$;
             ALTER DOMAIN voucher.balance_left DROP CONSTRAINT above_20",
        )
        .unwrap();
        assert_eq!(row("GIFT"), "2 25");
        // a BEFORE UPDATE trigger: the statement, which fires it
        Spi::run(
            "CREATE FUNCTION pg_temp.half() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN NEW.balance := NEW.balance - 1; RETURN NEW; END $$;
             CREATE TRIGGER t BEFORE UPDATE ON voucher.code \
                FOR EACH ROW EXECUTE FUNCTION pg_temp.half()",
        )
        .unwrap();
        assert_eq!(go(gift, None, Some(5)), "fallback");
        Spi::run("SELECT voucher.redeem('GIFT', amount => 5)").unwrap();
        assert_eq!(row("GIFT"), "3 19");
        Spi::run("DROP TRIGGER t ON voucher.code").unwrap();
        assert_eq!(go(gift, None, Some(1)), "claimed 18");
        // an AFTER UPDATE trigger that would fire: the statement
        Spi::run(
            "CREATE TRIGGER t AFTER UPDATE ON voucher.code \
                FOR EACH ROW EXECUTE FUNCTION pg_temp.half()",
        )
        .unwrap();
        assert_eq!(go(gift, None, Some(1)), "fallback");
        Spi::run("DROP TRIGGER t ON voucher.code").unwrap();
        // one that cannot (UPDATE OF a column the claim does not change): the claim
        Spi::run(
            "CREATE TRIGGER t AFTER UPDATE OF display ON voucher.code \
                FOR EACH ROW EXECUTE FUNCTION pg_temp.half()",
        )
        .unwrap();
        assert_eq!(go(gift, None, Some(1)), "claimed 17");
    }

    /// The row's current tid, as the probe would hand it over.
    fn ctid(code: &str) -> pg_sys::ItemPointerData {
        let t = Spi::get_one::<String>(&format!(
            "SELECT ctid::text FROM voucher.code WHERE code = '{code}'"
        ))
        .unwrap()
        .unwrap();
        let (b, o) = t
            .trim_matches(|c| c == '(' || c == ')')
            .split_once(',')
            .unwrap();
        let block: u32 = b.parse().unwrap();
        pg_sys::ItemPointerData {
            ip_blkid: pg_sys::BlockIdData {
                bi_hi: (block >> 16) as u16,
                bi_lo: (block & 0xffff) as u16,
            },
            ip_posid: o.parse().unwrap(),
        }
    }

    /// Handed the tid the probe found, the claim locks the row there and claims as by the
    /// primary key; a tid of another row, or of a version this transaction replaced, leaves the
    /// answer to the statement.
    #[pg_test]
    fn the_claim_at_a_tid_follows_the_row() {
        let tenant = authenticate("claim at");
        Spi::run(
            "SELECT voucher.add_code(voucher.create_campaign('three', redemption_limit => 3), 'T3');
             SELECT voucher.add_code(voucher.create_campaign('other', redemption_limit => 3), 'O3')",
        )
        .unwrap();
        let (t3, o3) = (voucher("T3"), voucher("O3"));
        let at = |v, tid| show(as_definer(|| claim(tenant, v, Some(3), None, Some(tid))));
        let first = ctid("T3");
        let place = |t: pg_sys::ItemPointerData| (t.ip_blkid.bi_hi, t.ip_blkid.bi_lo, t.ip_posid);
        assert_eq!(at(t3, first), "claimed -");
        // the row has a new version now, made by this transaction: an older tid is not one a
        // probe of this call can hand over (its fresh snapshot sees the new version), and the
        // statement answers; the current tid claims. (A version a concurrent transaction
        // replaced is followed to the newest: the isolation specs' last use and gift card.)
        assert_ne!(place(ctid("T3")), place(first));
        assert_eq!(at(t3, first), "fallback");
        assert_eq!(at(t3, ctid("T3")), "claimed -");
        assert_eq!(at(t3, ctid("T3")), "claimed -");
        assert_eq!(at(t3, ctid("T3")), "missed");
        assert_eq!(row("T3"), "3 ");
        // another row's tid: the statement answers
        assert_eq!(at(t3, ctid("O3")), "fallback");
        assert_eq!(at(o3, ctid("O3")), "claimed -");
    }

    fn go_other(other: pgrx::Uuid, v: pgrx::Uuid) -> String {
        show(as_definer(|| claim(other, v, None, None, None)))
    }
}
