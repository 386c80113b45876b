//! The interface through which capabilities below the audit trail (the tenant context, above
//! all) record audit events without depending on it. `audit` installs the recorder when the
//! library loads; the event types live here so that both sides can name them.

use std::sync::OnceLock;

use pgrx::pg_sys;

/// One event to record.
pub struct Event {
    pub tenant: [u8; 16],
    pub actor: serde_json::Value,
    pub action: &'static str,
    pub object_type: Option<&'static str>,
    pub object_id: Option<String>,
    pub details: serde_json::Value,
    /// When it happened, for events written later than they occurred (None: now()).
    pub at: Option<pg_sys::TimestampTz>,
}

/// What the audit trail provides.
pub struct Recorder {
    /// Records an event in the current transaction.
    pub write: fn(&Event),
    /// Records an event even if the current transaction rolls back.
    pub write_durably: fn(Event),
    /// Writes events that wait from earlier, failed transactions, if the current one can.
    pub flush_pending: fn(),
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Called once, when the library loads.
pub fn install(recorder: Recorder) {
    let _ = RECORDER.set(recorder);
}

fn recorder() -> &'static Recorder {
    RECORDER
        .get()
        .expect("the audit recorder is installed in _PG_init")
}

pub fn record(e: &Event) {
    (recorder().write)(e)
}

pub fn record_durably(e: Event) {
    (recorder().write_durably)(e)
}

pub fn flush_pending() {
    (recorder().flush_pending)()
}
