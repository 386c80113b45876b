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

/// Runs `f` with sequential scans off for the planner, as a function's `SET enable_seqscan =
/// off` would, and puts the setting back on return, also when `f` raises.
///
/// For kept look-ups by a unique key of a table that grows: a plan made while the table was
/// nearly empty (a fresh install, a new tenant, right after a purge) scans it, and a backend
/// keeps that plan until something invalidates it, while each scan grows with the table. A
/// plan made here cannot pick the scan, whatever the statistics said at that moment.
///
/// The planner reads the setting's C variable, so that is what this flips, for the span of `f`
/// only. A GUC nest level (NewGUCNestLevel, set_config_option, AtEOXact_GUC, which walks every
/// setting) did the same for about 4 µs per kept statement: 2 % of a shop redemption's CPU in
/// the issue 17 profile, for a statement that re-plans a few times per backend at most. The
/// value is restored by a guard's `Drop`: an error inside `f` reaches here as a Rust panic
/// (pgrx turns every PostgreSQL error raised under SPI into one) and unwinds through it. A
/// function with its own `SET enable_seqscan` called inside `f` saves and restores the value it
/// finds, so it leaves the variable as it found it.
pub fn without_seqscans<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a backend-global bool of the planner, written by this backend only.
            unsafe { pg_sys::enable_seqscan = self.0 };
        }
    }
    // SAFETY: as above; the guard puts the saved value back however `f` ends.
    let _restore = unsafe {
        let saved = Restore(pg_sys::enable_seqscan);
        pg_sys::enable_seqscan = false;
        saved
    };
    f()
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

    /// An error inside (pgrx raises PostgreSQL's errors under SPI as Rust panics) leaves the
    /// setting as it was: here the session had turned sequential scans off itself, and that
    /// stays, and a later call puts "on" back.
    #[pg_test]
    fn without_seqscans_restores_the_setting_when_f_raises() {
        Spi::run("SET enable_seqscan = off").unwrap();
        let caught =
            std::panic::catch_unwind(|| super::without_seqscans::<()>(|| panic!("raised inside")));
        assert!(caught.is_err());
        assert!(!unsafe { pgrx::pg_sys::enable_seqscan });
        Spi::run("SET enable_seqscan = on").unwrap();
        let caught = std::panic::catch_unwind(|| {
            super::without_seqscans(|| {
                assert!(!unsafe { pgrx::pg_sys::enable_seqscan });
                panic!("raised inside")
            })
        });
        assert!(caught.is_err());
        assert_eq!(
            Spi::get_one::<String>("SELECT current_setting('enable_seqscan')"),
            Ok(Some("on".into()))
        );
        assert!(unsafe { pgrx::pg_sys::enable_seqscan });
    }
}
