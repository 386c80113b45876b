//! SPI helpers: statements prepared once per backend and kept.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

pub fn oids(types: &[pg_sys::Oid]) -> Vec<pg_sys::PgOid> {
    types.iter().map(|&o| o.into()).collect()
}

/// Runs the statement kept in `slot`, preparing it on first use. `mutating` statements see a
/// fresh snapshot (what concurrent transactions committed while we waited on a lock).
///
/// It runs (and so is planned, whichever execution the plan cache re-plans it at) without
/// sequential scans: every kept statement is a look-up or a write by a key of a table that can
/// start empty and grow (see [`without_seqscans`]). Planned on a table analyzed while nearly
/// empty, the look-ups of a customer, a code, a customer's usage, a hot voucher's slots and an
/// idempotency key all kept a plan scanning the whole table (issue 17, notes/issue-17-seqscan).
/// The nest level costs about half a microsecond per statement.
pub fn run_kept<'c>(
    client: &SpiClient<'c>,
    slot: &mut Option<OwnedPreparedStatement>,
    sql: impl FnOnce() -> String,
    types: &[pg_sys::Oid],
    mutating: bool,
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> SpiTupleTable<'c> {
    if slot.is_none() {
        let text = sql();
        let prepared = if mutating {
            client.prepare_mut(text.as_str(), &oids(types))
        } else {
            client.prepare(text.as_str(), &oids(types))
        };
        *slot = Some(prepared.expect("statement prepares").keep());
    }
    let statement = slot.as_ref().expect("prepared above");
    without_seqscans(|| {
        client
            .select(statement, limit, args)
            .expect("statement runs")
    })
}

/// Runs `f` with sequential scans off, as a function's `SET enable_seqscan = off` would, undone
/// on return (and by a (sub)transaction abort if `f` raises).
///
/// For kept look-ups by a unique key of a table that grows: a plan made while the table was
/// nearly empty (a fresh install, a new tenant, right after a purge) scans it, and a backend
/// keeps that plan until something invalidates it, while each scan grows with the table. A
/// plan made here cannot pick the scan, whatever the statistics said at that moment.
pub fn without_seqscans<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level, exactly as fmgr_security_definer opens one for a SET clause;
    // enable_seqscan is a USERSET setting.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"enable_seqscan".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let result = f();
        pg_sys::AtEOXact_GUC(true, level);
        result
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn plan() -> String {
        Spi::connect(|c| {
            c.select(
                "EXPLAIN (COSTS OFF) SELECT * FROM seq_probe WHERE k = 7",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
        })
    }

    /// On a table of one row the planner scans it; inside without_seqscans it takes the unique
    /// index, and the setting is back afterwards.
    #[pg_test]
    fn without_seqscans_plans_by_the_index_and_restores_the_setting() {
        Spi::run("CREATE TEMP TABLE seq_probe (k int PRIMARY KEY, v text)").unwrap();
        Spi::run("INSERT INTO seq_probe VALUES (1, 'one'); ANALYZE seq_probe").unwrap();
        assert!(plan().contains("Seq Scan"), "{}", plan());
        let inside = super::without_seqscans(plan);
        assert!(inside.contains("seq_probe_pkey"), "{inside}");
        assert_eq!(
            Spi::get_one::<String>("SELECT current_setting('enable_seqscan')"),
            Ok(Some("on".into()))
        );
    }
}
