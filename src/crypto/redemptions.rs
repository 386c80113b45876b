//! Redemption metadata (free-form, often personal: addresses, phone numbers) is stored encrypted
//! under the tenant's data key, bound to its redemption row.

use pgrx::spi::SpiClient;
use pgrx::JsonB;

use super::store::{self, Place};
use crate::common::error::Result;

type Tenant = [u8; 16];

/// The metadata of redemption `redemption` as stored: (data key id, ciphertext).
pub fn seal_metadata(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    redemption: pgrx::Uuid,
    metadata: &JsonB,
) -> Result<(i32, Vec<u8>)> {
    let (key_id, key) = store::reserve(client, tenant)?;
    let row = crate::common::uuid_text(redemption.as_bytes());
    let ct = store::seal_with(
        key_id,
        &key,
        tenant,
        Place {
            table: "redemption",
            column: "metadata",
            row: &row,
        },
        metadata.0.to_string().as_bytes(),
    );
    Ok((key_id, ct))
}

/// Moves up to `limit` redemptions' metadata from the `old` data keys to the active one.
pub fn move_metadata(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    old: &[i32],
    limit: i64,
) -> Result<i64> {
    let rows: Vec<(pgrx::Uuid, Vec<u8>)> = client
        .update(
            "SELECT redemption_id, metadata FROM voucher.redemption \
              WHERE tenant_id = $1 AND key_id = ANY($2) LIMIT $3 FOR NO KEY UPDATE",
            None,
            &[
                store::uuid(tenant).into(),
                old.to_vec().into(),
                limit.into(),
            ],
        )
        .expect("redemptions to move")
        .filter_map(|r| Some((r.get::<pgrx::Uuid>(1).ok()??, r.get::<Vec<u8>>(2).ok()??)))
        .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut cts = Vec::with_capacity(rows.len());
    let mut new_key = 0;
    for (id, ct) in &rows {
        let row = id.to_string();
        let place = Place {
            table: "redemption",
            column: "metadata",
            row: &row,
        };
        let plain = store::open(client, tenant, place, ct)?;
        let (key_id, key) = store::reserve(client, tenant)?;
        new_key = key_id;
        ids.push(*id);
        cts.push(store::seal_with(key_id, &key, tenant, place, &plain));
    }
    client
        .update(
            "UPDATE voucher.redemption r SET key_id = $2, metadata = u.m \
               FROM unnest($3::uuid[], $4::bytea[]) AS u(id, m) \
              WHERE r.tenant_id = $1 AND r.redemption_id = u.id",
            None,
            &[
                store::uuid(tenant).into(),
                new_key.into(),
                ids.into(),
                cts.into(),
            ],
        )
        .expect("redemptions moved");
    Ok(rows.len() as i64)
}
