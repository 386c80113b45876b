//! The master key: read from `voucher.master_key_file` (default `voucher_master.key` beside the
//! audit key in the data directory, mode 0600) or from the output of `voucher.master_key_command`.
//! The file is created on first use, with one key from the OS CSPRNG, but only when no tenant key
//! exists yet: a missing file with keys wrapped under it is a lost key, said plainly.
//!
//! The file holds one key per line (64 hex digits), oldest first; `rotate_master_key` appends a
//! new one. Keys never leave this module except as `&[u8; 32]` borrowed for one wrap or unwrap.

use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::pg_sys;

use super::envelope::Key;
use super::keyring;
use crate::common::error::{Result, VoucherError};
use crate::common::gucs;

/// The master keys this server holds, oldest first, each with its fingerprint.
pub struct Ring {
    keys: Vec<(String, Key)>,
}

impl Ring {
    pub fn newest(&self) -> (&str, &[u8; 32]) {
        let (f, k) = self.keys.last().expect("a ring is never empty");
        (f, k)
    }

    pub fn get(&self, fingerprint: &str) -> Option<&[u8; 32]> {
        self.keys
            .iter()
            .find(|(f, _)| f == fingerprint)
            .map(|(_, k)| &**k)
    }

    fn from_keys(keys: Vec<Key>) -> Ring {
        Ring {
            keys: keys
                .into_iter()
                .map(|k| (keyring::master_fingerprint(&k), k))
                .collect(),
        }
    }
}

thread_local! {
    /// Where the ring came from, and the ring.
    static RING: RefCell<Option<(String, Rc<Ring>)>> = const { RefCell::new(None) };
}

enum Source {
    File(String),
    Command(String),
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::File(p) => format!("file:{p}"),
            Source::Command(c) => format!("command:{c}"),
        }
    }
}

fn data_dir() -> String {
    // SAFETY: DataDir is set for the life of a backend.
    unsafe {
        CStr::from_ptr(pg_sys::DataDir)
            .to_string_lossy()
            .into_owned()
    }
}

fn source() -> Source {
    if let Some(c) = gucs::MASTER_KEY_COMMAND.get() {
        if !c.to_bytes().is_empty() {
            return Source::Command(c.to_string_lossy().into_owned());
        }
    }
    match gucs::MASTER_KEY_FILE.get() {
        Some(p) if !p.to_bytes().is_empty() => Source::File(p.to_string_lossy().into_owned()),
        _ => Source::File(format!("{}/voucher_master.key", data_dir())),
    }
}

/// The path of the master key file, when a file (not a command) provides the key.
pub fn file_path() -> Option<String> {
    match source() {
        Source::File(p) => Some(p),
        Source::Command(_) => None,
    }
}

fn not_ready(msg: String) -> VoucherError {
    VoucherError::NotReady(format!("voucher_ext: {msg}"))
}

fn read_file(path: &str) -> Result<Option<Vec<Key>>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(not_ready(format!(
                "master key file \"{path}\" cannot be read: {e}"
            )))
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(VoucherError::NotReady(format!(
            "voucher_ext: master key file \"{path}\" has group or world access (mode {mode:04o}); it must be 0600"
        )));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| not_ready(format!("master key file \"{path}\" cannot be read: {e}")))?,
    );
    keyring::parse_master_keys(&text)
        .map(Some)
        .map_err(|e| not_ready(format!("master key file \"{path}\" is not valid: {e}")))
}

fn run_command(cmd: &str) -> Result<Vec<Key>> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| not_ready(format!("master key command cannot be started: {e}")))?;
    let stdout = zeroize::Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(not_ready(format!(
            "master key command failed ({})",
            out.status
        )));
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| not_ready("master key command printed something that is not text".into()))?;
    keyring::parse_master_keys(text)
        .map_err(|e| not_ready(format!("master key command output is not valid: {e}")))
}

/// Writes `lines` to `path` through a temporary file: created 0600, synced, then linked (when
/// `fresh`: fails if another backend created the file first) or renamed over the old file.
fn write_file(path: &str, lines: &[zeroize::Zeroizing<String>], fresh: bool) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = format!("{path}.{}.tmp", std::process::id());
    let fail = |what: &str, e: std::io::Error| {
        not_ready(format!("master key file \"{path}\" cannot be {what}: {e}"))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| fail("created", e))?;
    let mut body = zeroize::Zeroizing::new(String::from(
        "# voucher_ext master keys, oldest first: back this file up, never share it\n",
    ));
    for l in lines {
        body.push_str(l);
        body.push('\n');
    }
    let written = f.write_all(body.as_bytes()).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("written", e));
    }
    let placed = if fresh {
        let r = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match r {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(fail("created", e)),
        }
    } else {
        std::fs::rename(&tmp, path).map_err(|e| fail("replaced", e))?;
        true
    };
    if let Some(dir) = std::path::Path::new(path).parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(placed)
}

/// Loads the ring (cached per backend; `reload` forces a fresh read). When the file is missing,
/// `may_create` says whether creating it is safe (no tenant key exists anywhere).
pub fn ring(reload: bool, may_create: impl FnOnce() -> Option<String>) -> Result<Rc<Ring>> {
    let src = source();
    let label = src.label();
    if !reload {
        let cached = RING.with(|r| match &*r.borrow() {
            Some((l, ring)) if *l == label => Some(ring.clone()),
            _ => None,
        });
        if let Some(r) = cached {
            return Ok(r);
        }
    }
    let keys = match &src {
        Source::Command(c) => run_command(c)?,
        Source::File(path) => match read_file(path)? {
            Some(k) => k,
            None => {
                if let Some(needed) = may_create() {
                    return Err(not_ready(format!(
                        "master key file \"{path}\" is missing, but tenant keys are wrapped under master key {needed}: restore the file from a backup (see the README, \"Encryption at rest\")"
                    )));
                }
                let key = keyring::random_key();
                if !write_file(path, &[keyring::master_key_line(&key)], true)? {
                    // another backend created it first: use theirs
                    read_file(path)?
                        .ok_or_else(|| not_ready(format!("master key file \"{path}\" vanished")))?
                } else {
                    vec![key]
                }
            }
        },
    };
    let ring = Rc::new(Ring::from_keys(keys));
    RING.with(|r| *r.borrow_mut() = Some((label, ring.clone())));
    Ok(ring)
}

/// Appends a fresh key to the master key file (the newest from now on). With a command as the
/// source, the operator adds keys where the command reads them; nothing is appended.
pub fn append_key() -> Result<()> {
    let Source::File(path) = source() else {
        return Ok(());
    };
    // Two rotations at once (in this database or another one sharing the file) must not lose
    // each other's key: read, append and replace under an exclusive lock on a lock file.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{path}.lock"))
        .and_then(|f| f.lock().map(|_| f))
        .map_err(|e| not_ready(format!("master key file \"{path}\" cannot be locked: {e}")))?;
    let existing = read_file(&path)?
        .ok_or_else(|| not_ready(format!("master key file \"{path}\" is missing")))?;
    let mut lines: Vec<_> = existing
        .iter()
        .map(|k| keyring::master_key_line(k))
        .collect();
    lines.push(keyring::master_key_line(&keyring::random_key()));
    write_file(&path, &lines, false)?;
    drop(lock);
    RING.with(|r| *r.borrow_mut() = None);
    Ok(())
}
