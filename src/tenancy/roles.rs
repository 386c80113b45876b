//! Key roles and what each may do inside its tenant (../shared/API.md, "Roles").
//!
//! SQL functions name the action they perform (`voucher._authorize('redeem')`); this table is the
//! only place that says which key role may perform it.

use crate::common::error::{Result, VoucherError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    Admin,
    Manager,
    Redeemer,
    Auditor,
}

impl KeyRole {
    pub const ALL: [KeyRole; 4] = [
        KeyRole::Admin,
        KeyRole::Manager,
        KeyRole::Redeemer,
        KeyRole::Auditor,
    ];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(KeyRole::Admin),
            "manager" => Ok(KeyRole::Manager),
            "redeemer" => Ok(KeyRole::Redeemer),
            "auditor" => Ok(KeyRole::Auditor),
            _ => Err(VoucherError::invalid_hint(
                format!("unknown key role \"{}\"", s.escape_default()),
                "key roles are admin, manager, redeemer and auditor",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Admin => "admin",
            KeyRole::Manager => "manager",
            KeyRole::Redeemer => "redeemer",
            KeyRole::Auditor => "auditor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// create and revoke API keys
    ManageKeys,
    /// list API keys (never their secrets)
    ReadKeys,
    /// create and change campaigns, generate and import codes, enable and disable vouchers
    ManageCampaigns,
    /// read campaigns and vouchers
    ReadCatalog,
    /// create and update customers
    WriteCustomers,
    /// read customers
    ReadCustomers,
    /// validate a code
    Validate,
    /// redeem a code and roll a redemption back
    Redeem,
    /// read redemptions and rollbacks
    ReadRedemptions,
    /// read and verify the audit log
    ReadAudit,
    /// tenant settings and GDPR tasks
    Administer,
    /// export a customer's data (privacy: reads, so it may run on a standby, unaudited there)
    ExportCustomers,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::ManageKeys,
        Action::ReadKeys,
        Action::ManageCampaigns,
        Action::ReadCatalog,
        Action::WriteCustomers,
        Action::ReadCustomers,
        Action::Validate,
        Action::Redeem,
        Action::ReadRedemptions,
        Action::ReadAudit,
        Action::Administer,
        Action::ExportCustomers,
    ];

    pub fn parse(s: &str) -> Result<Self> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                VoucherError::invalid(format!("unknown action \"{}\"", s.escape_default()))
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ManageKeys => "manage_keys",
            Action::ReadKeys => "read_keys",
            Action::ManageCampaigns => "manage_campaigns",
            Action::ReadCatalog => "read_catalog",
            Action::WriteCustomers => "write_customers",
            Action::ReadCustomers => "read_customers",
            Action::Validate => "validate",
            Action::Redeem => "redeem",
            Action::ReadRedemptions => "read_redemptions",
            Action::ReadAudit => "read_audit",
            Action::Administer => "administer",
            Action::ExportCustomers => "export_customers",
        }
    }

    /// The permission matrix.
    pub fn allowed_for(self, role: KeyRole) -> bool {
        use Action::*;
        match role {
            KeyRole::Admin => true,
            KeyRole::Manager => matches!(
                self,
                ManageCampaigns | ReadCatalog | WriteCustomers | ReadCustomers | ReadRedemptions
            ),
            KeyRole::Redeemer => matches!(self, Validate | Redeem | WriteCustomers),
            // not ReadCustomers: the customers view shows personal data in clear (crypto)
            KeyRole::Auditor => {
                matches!(self, ReadAudit | ReadKeys | ReadCatalog | ReadRedemptions)
            }
        }
    }

    /// Does this action write? The reading ones work on a hot standby (src/scale/standby.rs).
    pub fn writes(self) -> bool {
        use Action::*;
        match self {
            ManageKeys | ManageCampaigns | WriteCustomers | Redeem | Administer => true,
            ReadKeys | ReadCatalog | ReadCustomers | Validate | ReadRedemptions | ReadAudit
            | ExportCustomers => false,
        }
    }

    pub fn check(self, role: KeyRole) -> Result<()> {
        if self.allowed_for(role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = KeyRole::ALL
                .iter()
                .filter(|r| self.allowed_for(**r))
                .map(|r| r.as_str())
                .collect();
            let article = if role == KeyRole::Admin || role == KeyRole::Auditor {
                "an"
            } else {
                "a"
            };
            Err(VoucherError::forbidden_hint(
                format!(
                    "{article} {} key may not {}",
                    role.as_str(),
                    self.describe()
                ),
                format!("this needs a key with role {}", allowed.join(" or ")),
            ))
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Action::ManageKeys => "manage API keys",
            Action::ReadKeys => "list API keys",
            Action::ManageCampaigns => "change campaigns or vouchers",
            Action::ReadCatalog => "read campaigns or vouchers",
            Action::WriteCustomers => "change customers",
            Action::ReadCustomers => "read customers",
            Action::Validate => "validate vouchers",
            Action::Redeem => "redeem or roll back vouchers",
            Action::ReadRedemptions => "read redemptions",
            Action::ReadAudit => "read the audit log",
            Action::Administer => "administer the tenant",
            Action::ExportCustomers => "export customers",
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn matrix_follows_the_contract() {
        use Action::*;
        // redeemer: validate, redeem, roll back, upsert customers; nothing else
        let redeemer: Vec<_> = Action::ALL
            .into_iter()
            .filter(|a| a.allowed_for(KeyRole::Redeemer))
            .collect();
        assert_eq!(redeemer, vec![WriteCustomers, Validate, Redeem]);
        // auditor never writes
        for a in [
            ManageKeys,
            ManageCampaigns,
            WriteCustomers,
            Validate,
            Redeem,
            Administer,
            ExportCustomers,
        ] {
            assert!(!a.allowed_for(KeyRole::Auditor), "{a:?}");
        }
        // manager: campaigns, vouchers, codes, customers; read redemptions; no keys, no audit
        assert!(ManageCampaigns.allowed_for(KeyRole::Manager));
        assert!(ReadRedemptions.allowed_for(KeyRole::Manager));
        assert!(!ManageKeys.allowed_for(KeyRole::Manager));
        assert!(!ReadAudit.allowed_for(KeyRole::Manager));
        assert!(!Redeem.allowed_for(KeyRole::Manager));
        // admin: everything
        assert!(Action::ALL.iter().all(|a| a.allowed_for(KeyRole::Admin)));
        // only admins and auditors read the audit log
        let readers: Vec<_> = KeyRole::ALL
            .into_iter()
            .filter(|r| ReadAudit.allowed_for(*r))
            .collect();
        assert_eq!(readers, vec![KeyRole::Admin, KeyRole::Auditor]);
        // only admins export customers (privacy), and exporting reads (it runs on a standby)
        let exporters: Vec<_> = KeyRole::ALL
            .into_iter()
            .filter(|r| ExportCustomers.allowed_for(*r))
            .collect();
        assert_eq!(exporters, vec![KeyRole::Admin]);
        assert!(!ExportCustomers.writes());
    }

    #[test]
    fn what_an_auditor_may_do_works_on_a_standby() {
        for a in Action::ALL {
            if a.allowed_for(KeyRole::Auditor) {
                assert!(!a.writes(), "{a:?}");
            }
        }
        assert!(!Action::Validate.writes());
        assert!(Action::Redeem.writes());
        assert!(Action::ManageKeys.writes());
    }

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()).unwrap(), a);
        }
        for r in KeyRole::ALL {
            assert_eq!(KeyRole::parse(r.as_str()).unwrap(), r);
        }
        assert!(KeyRole::parse("root").is_err());
        assert!(KeyRole::parse("Admin").is_err());
    }

    #[test]
    fn denial_names_the_roles_that_may() {
        let err = Action::ManageKeys.check(KeyRole::Redeemer).unwrap_err();
        assert_eq!(err.sqlstate(), "42501");
        let (msg, _, hint) = err.parts();
        assert_eq!(msg, "a redeemer key may not manage API keys");
        assert_eq!(hint.unwrap(), "this needs a key with role admin");
    }
}
