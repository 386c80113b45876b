//! `voucher.distribute()`: the extension's tables made Citus tables by `tenant_id`, co-located,
//! with the policies, foreign keys, triggers and views adjusted to what Citus accepts.

use pgrx::prelude::*;

use super::cluster::{citus_loaded, cluster_key, key_path, KEY_BYTES};
use crate::common::error::{api, Result, VoucherError};

/// The extension's tables and how each is placed: reference tables first (the others refer to
/// `tenant`), then every other table of schema `voucher` (all have `tenant_id`), distributed by
/// it and co-located with [`ANCHOR`]'s group.
const REFERENCE: &[&str] = &["voucher.tenant", "voucher.credential"];
const ANCHOR: &str = "voucher.campaign";

/// The tables to distribute, [`ANCHOR`] first: found in the catalog, so that a table another
/// capability adds (or drops) needs no change here.
fn distributed_tables() -> Vec<String> {
    Spi::connect(|c| {
        c.select(
            "SELECT t.name FROM pg_catalog.pg_class c, \
                    LATERAL (SELECT 'voucher.' || pg_catalog.quote_ident(c.relname) AS name) t \
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'r' \
                AND t.name <> ALL ($1) \
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid \
                               AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
              ORDER BY t.name <> $2, t.name",
            None,
            &[
                REFERENCE
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .into(),
                ANCHOR.into(),
            ],
        )
        .expect("pg_class readable")
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect()
    })
}

fn create_key_file(path: &str) -> std::result::Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = crate::common::rng::os_bytes::<KEY_BYTES>();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create cluster key file \"{path}\": {e}"))?;
    f.write_all(&key)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write \"{path}\": {e}"))
}

fn is_citus_table(t: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
        &[t.into()],
    )
    .expect("pg_dist_partition readable")
    .unwrap_or(false)
}

/// Runs a DDL statement here and on every worker (where the extension's own copies of the
/// tables, the shells Citus routes through, must match the coordinator's).
fn everywhere(sql: &str) -> Result<()> {
    Spi::run(sql).expect("DDL runs");
    let failed = Spi::get_one_with_args::<String>(
        "SELECT string_agg(nodename || ':' || nodeport || ': ' || result, '; ') \
           FROM run_command_on_workers($1) WHERE NOT success",
        &[sql.into()],
    )
    .expect("run_command_on_workers runs");
    match failed {
        Some(f) => Err(VoucherError::NotReady(format!("on the workers: {f}"))),
        None => Ok(()),
    }
}

fn distribute_impl() -> Result<i64> {
    // SAFETY: reads backend-local state.
    if unsafe { !pg_sys::superuser() } {
        return Err(VoucherError::forbidden_hint(
            "only a superuser may distribute the extension's tables",
            "run SELECT voucher.distribute() as a superuser on the Citus coordinator",
        ));
    }
    crate::scale::standby::refuse_writes("distribute the extension's tables")?;
    if !citus_loaded() {
        return Err(VoucherError::NotReady(
            "Citus is not loaded: add citus to shared_preload_libraries and CREATE EXTENSION citus"
                .into(),
        ));
    }
    let path = key_path();
    if cluster_key().is_none() {
        create_key_file(&path).map_err(VoucherError::NotReady)?;
    }
    // Citus runs the shard queries of our SECURITY DEFINER functions as their owner: the
    // workers must let voucher_definer log in (from the cluster's nodes only: pg_hba.conf).
    // ALTER ROLE propagates to the workers.
    Spi::run("ALTER ROLE voucher_definer LOGIN").expect("ALTER ROLE runs");
    let distributed = distributed_tables();
    if REFERENCE.iter().all(|t| is_citus_table(t)) && distributed.iter().all(|t| is_citus_table(t))
    {
        return Ok(0);
    }
    // Citus refuses sub-selects in the policies of distributed tables: the policies compare
    // with the function itself (evaluated per row where no index condition takes it, instead of
    // once per statement as an init-plan)
    for t in REFERENCE
        .iter()
        .map(|t| t.to_string())
        .chain(distributed.iter().cloned())
    {
        everywhere(&format!(
            "ALTER POLICY tenant_isolation ON {t} USING (tenant_id = voucher.current_tenant()) \
             WITH CHECK (tenant_id = voucher.current_tenant())"
        ))?;
    }
    everywhere("ALTER POLICY platform_scan ON voucher.tenant USING (voucher._tenant_scan())")?;
    everywhere(
        "ALTER POLICY key_lookup ON voucher.credential USING (prefix = voucher._key_probe())",
    )?;
    let left = Spi::get_one::<i64>(
        "SELECT count(*) FROM pg_catalog.pg_policies WHERE schemaname = 'voucher' \
            AND (qual ~* 'select' OR with_check ~* 'select')",
    )
    .expect("pg_policies readable")
    .unwrap_or(0);
    if left > 0 {
        return Err(VoucherError::NotReady(format!(
            "{left} row-level security policies of schema voucher still hold a sub-select, which Citus refuses"
        )));
    }
    // Citus converts every local table in the foreign-key graph of a table it distributes, and
    // that conversion re-creates dependent views, which it may not do to the extension's views.
    // So the foreign keys among our tables come off first and go back on once every table is
    // distributed (Citus then creates them on the co-located shards).
    let fks: Vec<(String, String, String)> = Spi::connect(|c| {
        c.select(
            "SELECT conrelid::regclass::text, conname::text, pg_catalog.pg_get_constraintdef(oid) \
               FROM pg_catalog.pg_constraint \
              WHERE contype = 'f' AND connamespace = 'voucher'::regnamespace ORDER BY oid",
            None,
            &[],
        )
        .expect("pg_constraint readable")
        .map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
            )
        })
        .collect()
    });
    for (t, name, _) in &fks {
        everywhere(&format!(
            "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS \"{name}\""
        ))?;
    }
    let mut n = 0;
    // triggers (append-only audit, direct-DML audit) must be created on the shards too; one
    // connection per node, as foreign keys to reference tables need
    Spi::run("SET LOCAL citus.enable_unsafe_triggers = on").expect("SET LOCAL runs");
    Spi::run("SET LOCAL citus.multi_shard_modify_mode = 'sequential'").expect("SET LOCAL runs");
    for t in REFERENCE {
        if !is_citus_table(t) {
            Spi::run_with_args(
                "SELECT create_reference_table($1::regclass)",
                &[(*t).into()],
            )
            .expect("create_reference_table runs");
            n += 1;
        }
    }
    for (i, t) in distributed.iter().enumerate() {
        if !is_citus_table(t) {
            let colocate = if i == 0 { "default" } else { ANCHOR };
            Spi::run_with_args(
                "SELECT create_distributed_table($1::regclass, 'tenant_id', colocate_with => $2)",
                &[t.as_str().into(), colocate.into()],
            )
            .expect("create_distributed_table runs");
            n += 1;
        }
    }
    for (t, name, def) in &fks {
        Spi::run(&format!("ALTER TABLE {t} ADD CONSTRAINT \"{name}\" {def}"))
            .expect("ADD CONSTRAINT runs");
    }
    // the views, re-pointed at SECURITY DEFINER functions (see views.sql); the coordinator's own
    Spi::run("SET LOCAL citus.enable_ddl_propagation = off").expect("SET LOCAL runs");
    Spi::run(include_str!("views.sql")).expect("the views are re-pointed");
    Ok(n)
}

/// Superuser, on the Citus coordinator, once: distributes the extension's tables by
/// `tenant_id` (co-located), makes `tenant` and `credential` reference tables, and creates the
/// cluster key file if it is missing (copy it to every worker). Returns how many tables it
/// distributed now (0 when already done).
#[pg_extern(volatile, parallel_unsafe)]
fn distribute() -> i64 {
    api(distribute_impl)
}
