//! The known tenant settings and their validation, in plain Rust. A capability that needs a
//! per-tenant setting adds one line to `REGISTRY`; `voucher.configure` then accepts it, checks
//! its value and stores it in canonical form.

/// What a setting's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// a whole number in [min, max]
    Count { min: i64, max: i64 },
    /// a duration in seconds in [min, max]: `90`, `90s`, `15min`, `15 minutes`, `1h`, `2 days`
    Duration { min: i64, max: i64 },
    /// true/false, on/off, yes/no, 1/0
    Bool,
}

pub struct Setting {
    pub name: &'static str,
    pub ty: Type,
    /// the value without a row in voucher.tenant_setting, in canonical form
    pub default: &'static str,
    pub description: &'static str,
}

const WEEK: i64 = 7 * 86_400;

/// Every tenant setting. Keep the README's "Settings" table in step (a unit test checks it).
pub const REGISTRY: &[Setting] = &[
    // privacy (sql/privacy.sql reads them from voucher.tenant_setting)
    Setting {
        name: "require_profile_consent",
        ty: Type::Bool,
        default: "false",
        description: "store email, name and metadata only for customers who granted the 'profile' consent (VC014 otherwise)",
    },
    Setting {
        name: "customer_retention_days",
        ty: Type::Count { min: 0, max: 36_500 },
        default: "0",
        description: "forget customers without activity for this many days (voucher.forget_inactive_customers); 0: keep them",
    },
    Setting {
        name: "brute_force_protection",
        ty: Type::Bool,
        default: "true",
        description: "count failed code look-ups and lock out customers, clients and keys that guess",
    },
    Setting {
        name: "customer_lockout_threshold",
        ty: Type::Count { min: 1, max: 1_000_000 },
        default: "10",
        description: "failed look-ups per customer within customer_lockout_window that lock the customer out",
    },
    Setting {
        name: "customer_lockout_window",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "15 min",
        description: "the sliding window customer failures are counted in",
    },
    Setting {
        name: "customer_lockout_period",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "15 min",
        description: "how long a customer's first lock-out lasts (each further one within a day doubles it, up to lockout_max_period)",
    },
    Setting {
        name: "client_lockout_threshold",
        ty: Type::Count { min: 1, max: 1_000_000 },
        default: "10",
        description: "failed look-ups per client within client_lockout_window that lock the client out",
    },
    Setting {
        name: "client_lockout_window",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "15 min",
        description: "the sliding window client failures are counted in",
    },
    Setting {
        name: "client_lockout_period",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "15 min",
        description: "how long a client's first lock-out lasts",
    },
    Setting {
        name: "key_lockout_threshold",
        ty: Type::Count { min: 1, max: 1_000_000 },
        default: "100",
        description: "failed look-ups per API key, by calls naming neither customer nor client, within key_lockout_window",
    },
    Setting {
        name: "key_lockout_window",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "1 min",
        description: "the sliding window anonymous failures per key are counted in",
    },
    Setting {
        name: "key_lockout_period",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "1 min",
        description: "how long anonymous calls of a key stay locked out",
    },
    Setting {
        name: "lockout_max_period",
        ty: Type::Duration { min: 1, max: WEEK },
        default: "1 h",
        description: "the longest a repeated lock-out grows to; set it to the period for fixed lock-outs",
    },
];

pub fn find(name: &str) -> Option<&'static Setting> {
    REGISTRY.iter().find(|s| s.name == name)
}

/// Seconds in a duration text, or None.
pub fn parse_duration(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A duration in its canonical text: the largest unit that divides it.
pub fn format_duration(seconds: i64) -> String {
    for (unit, f) in [("d", 86_400), ("h", 3600), ("min", 60)] {
        if seconds != 0 && seconds % f == 0 {
            return format!("{} {unit}", seconds / f);
        }
    }
    format!("{seconds} s")
}

/// The canonical form of `value` for `setting`, or why it is refused.
pub fn canonical(setting: &Setting, value: &str) -> Result<String, String> {
    let v = value.trim();
    match setting.ty {
        Type::Bool => match v.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok("true".into()),
            "false" | "off" | "no" | "0" => Ok("false".into()),
            _ => Err("expected true or false".into()),
        },
        Type::Count { min, max } => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
            _ => Err(format!("expected a whole number from {min} to {max}")),
        },
        Type::Duration { min, max } => match parse_duration(v) {
            Some(s) if (min..=max).contains(&s) => Ok(format_duration(s)),
            _ => Err(format!(
                "expected a duration from {} to {}, like 90s, 15min or 1h",
                format_duration(min),
                format_duration(max)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_canonical_and_names_unique() {
        let mut names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for s in REGISTRY {
            assert_eq!(
                canonical(s, s.default).as_deref(),
                Ok(s.default),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("15min", 900),
            ("15 minutes", 900),
            ("1 H", 3600),
            ("2 days", 172_800),
        ] {
            assert_eq!(parse_duration(text), Some(secs), "{text}");
        }
        for bad in ["", "min", "-5", "1.5h", "5 weeks", "99999999999999999999"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(900), "15 min");
        assert_eq!(format_duration(90), "90 s");
        assert_eq!(format_duration(7200), "2 h");
    }

    #[test]
    fn values_are_checked() {
        let t = find("customer_lockout_threshold").unwrap();
        assert_eq!(canonical(t, " 5 ").as_deref(), Ok("5"));
        assert!(canonical(t, "0").is_err());
        assert!(canonical(t, "ten").is_err());
        let w = find("customer_lockout_window").unwrap();
        assert_eq!(canonical(w, "60 s").as_deref(), Ok("1 min"));
        assert!(canonical(w, "8 days").is_err());
        let b = find("brute_force_protection").unwrap();
        assert_eq!(canonical(b, "OFF").as_deref(), Ok("false"));
        assert!(canonical(b, "maybe").is_err());
        assert!(find("no_such_setting").is_none());
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../README.md");
        for s in REGISTRY {
            assert!(
                readme.contains(&format!("| `{}` |", s.name)),
                "README lacks {}",
                s.name
            );
        }
    }
}
