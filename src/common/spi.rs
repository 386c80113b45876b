//! SPI helpers: statements prepared once per backend and kept.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

pub fn oids(types: &[pg_sys::Oid]) -> Vec<pg_sys::PgOid> {
    types.iter().map(|&o| o.into()).collect()
}

/// Runs the statement kept in `slot`, preparing it on first use. `mutating` statements see a
/// fresh snapshot (what concurrent transactions committed while we waited on a lock).
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
    client
        .select(slot.as_ref().expect("prepared above"), limit, args)
        .expect("statement runs")
}
