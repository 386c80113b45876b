//! Statements Citus routes to one shard: the audit row, the sealer's chain rows and
//! `generate_codes`' chunks as single-shard `INSERT ... VALUES` (an `INSERT ... SELECT` would be
//! run as a COPY, which row-level security refuses), and the coordinator's snapshot horizon.

use pgrx::prelude::*;

/// `audit::INSERT` in two steps for a cluster: the event id and time from the coordinator's
/// sequence and clock, then a single-row `INSERT ... VALUES` that Citus routes to the tenant's
/// shard (an `INSERT ... SELECT` becomes a COPY there, which row-level security refuses).
/// `args` as for `audit::INSERT`: tenant, at, actor, action, object type, object id, details.
pub fn insert_audit(client: &mut pgrx::spi::SpiClient<'_>, args: [pgrx::datum::DatumWithOid; 7]) {
    let [tenant, at, actor, action, object_type, object_id, details] = args;
    let row = client
        .select(
            "SELECT nextval('voucher.audit_event_id_seq'), coalesce($1, now())",
            Some(1),
            &[at],
        )
        .expect("event id")
        .first();
    let id = row.get::<i64>(1).ok().flatten().expect("an event id");
    let at = row
        .get::<pgrx::datum::TimestampWithTimeZone>(2)
        .ok()
        .flatten()
        .expect("a time");
    let all = [
        tenant,
        id.into(),
        at.into(),
        actor,
        action,
        object_type,
        object_id,
        details,
    ];
    client
        .update(
            "INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, \
                                              object_id, details, row_hash) \
             VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8::jsonb, \
                     voucher._audit_hash($1, $2, $3, $4::jsonb::text, $5, $6, $7, $8::jsonb::text))",
            None,
            &all,
        )
        .expect("audit insert");
}

/// The sealer's chain rows as multi-row `INSERT ... VALUES` of at most 1,000 rows, each routed
/// to the tenant's shard.
pub fn insert_chain(
    client: &mut pgrx::spi::SpiClient<'_>,
    tenant: pgrx::Uuid,
    ids: &[i64],
    hashes: &[Vec<u8>],
) {
    for (ids, hashes) in ids.chunks(1000).zip(hashes.chunks(1000)) {
        let values: Vec<String> = (0..ids.len())
            .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let mut args: Vec<pgrx::datum::DatumWithOid> = vec![tenant.into()];
        for (id, h) in ids.iter().zip(hashes) {
            args.push((*id).into());
            args.push(h.clone().into());
        }
        client
            .update(
                &format!(
                    "INSERT INTO voucher.audit_chain (tenant_id, event_id, chain_hash) VALUES {}",
                    values.join(", ")
                ),
                None,
                &args,
            )
            .expect("chain insert");
    }
}

/// `generate_codes`' chunk as multi-row `INSERT ... VALUES` of at most 1,000 rows of literals,
/// each routed to the tenant's shard (with parameters in its rows Citus would plan it as an
/// INSERT ... SELECT and COPY the rows, which RLS refuses). Literals are quoted by PostgreSQL's
/// own `quote_literal` rules: single quotes doubled, standard_conforming_strings assumed on, as
/// PostgreSQL has defaulted to since 9.1; a backslash-bearing value gets the E'' form.
pub fn insert_codes(
    client: &mut pgrx::spi::SpiClient<'_>,
    tenant: pgrx::Uuid,
    campaign: pgrx::Uuid,
    balance: &Option<AnyNumeric>,
    ids: &[pgrx::Uuid],
    codes: &[String],
    displays: &[Option<String>],
) {
    fn lit(s: &str) -> String {
        let q = s.replace('\'', "''");
        if q.contains('\\') {
            format!("E'{}'", q.replace('\\', "\\\\"))
        } else {
            format!("'{q}'")
        }
    }
    let balance = balance
        .as_ref()
        .map(|b| format!("{b}::numeric"))
        .unwrap_or_else(|| "NULL::numeric".into());
    for start in (0..codes.len()).step_by(1000) {
        let end = (start + 1000).min(codes.len());
        let values: Vec<String> = (start..end)
            .map(|i| {
                format!(
                    "('{tenant}'::uuid, '{}'::uuid, '{campaign}'::uuid, {}, {}, {balance})",
                    ids[i],
                    lit(&codes[i]),
                    displays[i]
                        .as_deref()
                        .map(lit)
                        .unwrap_or_else(|| "NULL".into())
                )
            })
            .collect();
        client
            .update(
                &format!(
                    "INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code, display, \
                                               balance) VALUES {}",
                    values.join(", ")
                ),
                None,
                &[],
            )
            .expect("code insert");
    }
}

/// The xmin of this node's snapshot (the coordinator's, where the audit writers run).
pub fn local_xmin(client: &mut pgrx::spi::SpiClient<'_>) -> i64 {
    client
        .update(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            None,
            &[],
        )
        .expect("snapshot xmin")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0)
}
