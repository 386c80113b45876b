//! What a lock-out leaves behind: one audit event when it starts, one when it ends (expired,
//! lifted by an admin, or its slot evicted) carrying the number of attempts refused meanwhile,
//! and nothing per refused attempt. Identities appear only as fingerprints. Lock-outs of source
//! addresses belong to no tenant: they go to the server log instead.

use pgrx::pg_sys;

use super::counter::{Ended, Kind, Micros, Policy, SECOND};
use super::fingerprint;
use super::table::Identity;
use crate::common::events::{self, Event};
use crate::tenancy::context::{self, Context};

/// PostgreSQL's epoch (2000-01-01) in Unix seconds.
const PG_EPOCH: i64 = 946_684_800;

/// A `TimestampTz` as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(micros: Micros) -> String {
    let secs = micros.div_euclid(SECOND) + PG_EPOCH;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The hint of a VC012: when to retry.
pub fn retry_hint(until: Micros, now: Micros) -> String {
    let wait = (until - now + SECOND - 1).div_euclid(SECOND).max(1);
    format!("retry after {} (in {wait} s)", utc(until))
}

fn at(micros: Micros) -> Option<pg_sys::TimestampTz> {
    Some(micros)
}

/// An identity of a tenant was locked out just now.
pub fn locked(
    id: &Identity,
    ctx: &Context,
    until: Micros,
    failures: u32,
    policy: &Policy,
    now: Micros,
) {
    events::record_durably(Event {
        tenant: id.tenant,
        actor: context::actor_json(Some(ctx)),
        action: "throttle.locked",
        object_type: Some("lockout"),
        object_id: Some(fingerprint(&id.key)),
        details: serde_json::json!({
            "kind": id.kind.as_str(),
            "fingerprint": fingerprint(&id.key),
            "failures": failures,
            "window_seconds": policy.window / SECOND,
            "locked_until": utc(until),
            "period_seconds": (until - now) / SECOND,
        }),
        at: at(now),
    });
}

/// A source address was locked out of authenticate just now.
pub fn address_locked(id: &Identity, until: Micros, failures: u32) {
    pgrx::log!(
        "voucher_ext: source {} locked out of authenticate until {} after {} bad keys",
        fingerprint(&id.key),
        utc(until),
        failures
    );
}

/// A lock-out ended: `why` is expired, unlocked (by `by`) or evicted.
pub fn ended(e: &Ended, why: &str, by: Option<&Context>) {
    let kind = Kind::from_u8(e.kind).map_or("?", Kind::as_str);
    if e.kind == Kind::Address as u8 {
        pgrx::log!(
            "voucher_ext: source {} lock-out of authenticate ended ({why}): {} attempts refused during it",
            fingerprint(&e.key),
            e.refused
        );
        return;
    }
    events::record_durably(Event {
        tenant: e.tenant,
        actor: match by {
            Some(ctx) => context::actor_json(Some(ctx)),
            None => serde_json::json!({ "type": "system" }),
        },
        action: "throttle.unlocked",
        object_type: Some("lockout"),
        object_id: Some(fingerprint(&e.key)),
        details: serde_json::json!({
            "kind": kind,
            "fingerprint": fingerprint(&e.key),
            "reason": why,
            "locked_at": utc(e.locked_at),
            "ended_at": utc(e.until),
            "refused_while_locked": e.refused,
        }),
        at: at(if why == "expired" {
            e.until
        } else {
            unsafe { pg_sys::GetCurrentTimestamp() }
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "2000-01-01 00:00:00 UTC");
        // 2026-12-03 01:30:05 UTC = Unix 1796261405
        assert_eq!(
            utc((1_796_261_405 - PG_EPOCH) * SECOND + 999_999),
            "2026-12-03 01:30:05 UTC"
        );
        assert_eq!(utc(-SECOND), "1999-12-31 23:59:59 UTC");
        assert_eq!(
            utc((1_709_164_800 - PG_EPOCH) * SECOND),
            "2024-02-29 00:00:00 UTC"
        );
    }

    #[test]
    fn the_hint_rounds_the_wait_up() {
        let now = 10 * SECOND;
        assert_eq!(
            retry_hint(now + 90 * SECOND + 1, now),
            "retry after 2000-01-01 00:01:40 UTC (in 91 s)"
        );
        assert!(retry_hint(now, now).ends_with("(in 1 s)"));
    }
}
