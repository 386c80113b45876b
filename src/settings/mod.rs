//! Per-tenant settings: `voucher.configure(setting, value)` (admin keys) and the view
//! `voucher.settings`.
//!
//! Exports `get(tenant, name)` for capabilities that read a setting on their hot path. Values live
//! in `voucher.tenant_setting` (sql/settings.sql) and are cached per backend: preloaded, a
//! generation counter in shared memory, bumped by every committed change, tells a backend when to
//! re-read (an atomic read per use); not preloaded, a cached tenant is re-read after a second.
//! The known settings and their validation are `registry.rs`.

pub mod registry;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use crate::common::error::{api, Result, VoucherError};
use crate::common::events::{self, Event};
use crate::tenancy::context;
use crate::tenancy::roles::Action;

static GENERATION: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"voucher_ext settings generation") };
static mut SHARED: bool = false;

/// A tenant's values, as read at a generation (or an instant, without shared memory).
struct Cached {
    values: Vec<Option<String>>,
    generation: Option<u64>,
    read_at: Instant,
}

thread_local! {
    static CACHE: RefCell<HashMap<[u8; 16], Cached>> = RefCell::new(HashMap::new());
    /// This transaction changed settings: bump the generation if it commits.
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`.
pub fn init() {
    // SAFETY: reads a postmaster flag during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(GENERATION);
        // SAFETY: written once, in the postmaster, before any backend exists.
        unsafe { SHARED = true };
    }
}

fn generation() -> Option<u64> {
    // SAFETY: set once at load time.
    unsafe { SHARED }.then(|| GENERATION.get().load(Ordering::Acquire))
}

/// At the end of a top-level transaction.
pub fn end_of_transaction(committed: bool) {
    if PENDING.with(|p| p.replace(false)) && committed && generation().is_some() {
        GENERATION.get().fetch_add(1, Ordering::AcqRel);
    }
}

fn fresh(c: &Cached, generation: Option<u64>) -> bool {
    match generation {
        Some(g) => c.generation == Some(g),
        None => c.read_at.elapsed() < Duration::from_secs(1),
    }
}

fn load(tenant: [u8; 16]) -> Vec<Option<String>> {
    let rows: Vec<(String, String)> = context::as_tenant_definer(tenant, || {
        Spi::connect(|c| {
            c.select(
                "SELECT setting, value FROM voucher.tenant_setting WHERE tenant_id = $1",
                None,
                &[pgrx::Uuid::from_bytes(tenant).into()],
            )
            .expect("settings read")
            .filter_map(|r| Some((r.get(1).ok()??, r.get(2).ok()??)))
            .collect()
        })
    });
    registry::REGISTRY
        .iter()
        .map(|s| {
            rows.iter()
                .find(|(n, _)| n == s.name)
                .map(|(_, v)| v.clone())
        })
        .collect()
}

/// Runs `f` on the tenant's values, in registry order (None: the default).
fn with_values<R>(tenant: [u8; 16], f: impl FnOnce(&[Option<String>]) -> R) -> R {
    let generation = generation();
    let hit = CACHE.with(|c| {
        c.borrow()
            .get(&tenant)
            .filter(|x| fresh(x, generation))
            .map(|x| x.values.clone())
    });
    let values = match hit {
        Some(v) => v,
        None => {
            let values = load(tenant);
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() > 1000 {
                    c.clear();
                }
                c.insert(
                    tenant,
                    Cached {
                        values: values.clone(),
                        generation,
                        read_at: Instant::now(),
                    },
                )
            });
            values
        }
    };
    f(&values)
}

/// The tenant's value of a registered setting (its default if not configured).
pub fn get(tenant: [u8; 16], name: &str) -> String {
    let i = registry::REGISTRY
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("setting {name} is not registered"));
    with_values(tenant, |v| {
        v[i].clone()
            .unwrap_or_else(|| registry::REGISTRY[i].default.to_string())
    })
}

/// Several settings at once, from one cache look-up.
pub fn get_many<const N: usize>(tenant: [u8; 16], names: [&str; N]) -> [String; N] {
    with_values(tenant, |v| {
        names.map(|name| {
            let i = registry::REGISTRY
                .iter()
                .position(|s| s.name == name)
                .unwrap_or_else(|| panic!("setting {name} is not registered"));
            v[i].clone()
                .unwrap_or_else(|| registry::REGISTRY[i].default.to_string())
        })
    })
}

fn configure_impl(setting: Option<&str>, value: Option<&str>) -> Result<()> {
    let ctx = context::authorize(Action::Administer)?;
    let name = setting.ok_or(VoucherError::NullArgument("setting"))?;
    let known = registry::find(name).ok_or_else(|| {
        VoucherError::invalid_hint(
            format!("unknown setting \"{}\"", name.escape_default()),
            "voucher.settings lists the known settings",
        )
    })?;
    let canonical = value
        .map(|v| {
            registry::canonical(known, v).map_err(|why| {
                VoucherError::invalid_hint(format!("invalid value for {}", known.name), why)
            })
        })
        .transpose()?;
    let tenant = ctx.tenant;
    let actor = context::actor_label(&ctx);
    let before: Option<String> = context::as_tenant_definer(tenant, || {
        Spi::connect_mut(|c| {
            let args = [
                pgrx::Uuid::from_bytes(tenant).into(),
                known.name.into(),
                canonical.clone().into(),
                actor.as_str().into(),
            ];
            let before = c
                .update(
                    "SELECT value FROM voucher.tenant_setting \
                      WHERE tenant_id = $1 AND setting = $2 FOR UPDATE",
                    None,
                    &args[..2],
                )
                .expect("setting read")
                .first()
                .get_one::<String>()
                .ok()
                .flatten();
            if canonical.is_some() {
                context::hold_tenant(c, tenant)?;
                c.update(
                    "INSERT INTO voucher.tenant_setting AS s (tenant_id, setting, value, updated_by) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, setting) \
                     DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, \
                                   updated_by = EXCLUDED.updated_by",
                    None,
                    &args,
                )
                .expect("setting write");
            } else {
                c.update(
                    "DELETE FROM voucher.tenant_setting WHERE tenant_id = $1 AND setting = $2",
                    None,
                    &args[..2],
                )
                .expect("setting reset");
            }
            Ok(before)
        })
    })?;
    CACHE.with(|c| c.borrow_mut().remove(&tenant));
    events::record(&Event {
        tenant,
        actor: context::actor_json(Some(&ctx)),
        action: "tenant.configured",
        object_type: Some("tenant"),
        object_id: Some(pgrx::Uuid::from_bytes(tenant).to_string()),
        details: serde_json::json!({
            "setting": known.name,
            "before": before.unwrap_or_else(|| known.default.to_string()),
            "after": canonical.unwrap_or_else(|| known.default.to_string()),
        }),
        at: None,
    });
    Ok(())
}

/// Admin keys: sets one of the tenant's settings (`value => NULL`: back to the default).
#[pg_extern(volatile, parallel_unsafe)]
fn configure(setting: Option<&str>, value: Option<&str>) {
    api(|| configure_impl(setting, value))
}

/// Internal, for the voucher.settings view: the registry.
#[pg_extern(immutable, parallel_safe, name = "_setting_registry")]
fn setting_registry() -> TableIterator<
    'static,
    (
        name!(setting, &'static str),
        name!(default_value, &'static str),
        name!(description, &'static str),
    ),
> {
    TableIterator::new(
        registry::REGISTRY
            .iter()
            .map(|s| (s.name, s.default, s.description)),
    )
}

/// Internal, called by the trigger on voucher.tenant_setting.
#[pg_extern(volatile, parallel_unsafe, name = "_settings_changed")]
fn settings_changed() {
    PENDING.with(|p| p.set(true));
}
