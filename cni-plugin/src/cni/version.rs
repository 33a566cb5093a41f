//! CNI spec versions weir speaks.
//!
//! 0.1.0/0.2.0 are left out on purpose: their result type has no
//! `interfaces` list, so a chained plugin cannot find the pod's interface.

use std::fmt;
use std::str::FromStr;

use super::env::Command;
use super::error::{CniError, Result};

/// A supported CNI spec version. Ordering follows the spec's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first (the VERSION reply lists these).
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether `command` exists in this version of the spec.
    pub fn allows(self, command: Command) -> bool {
        self >= command.introduced_in()
    }

    /// Before 1.0.0 every `ips` entry carried `"version": "4"|"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Best-effort read of `cniVersion` from raw stdin, for choosing the
    /// version of an error result when the request itself failed to parse.
    pub fn sniff(stdin: &[u8]) -> Option<CniVersion> {
        let value: serde_json::Value = serde_json::from_slice(stdin).ok()?;
        value.get("cniVersion")?.as_str()?.parse().ok()
    }

    pub(crate) fn supported_list() -> String {
        CniVersion::ALL.map(CniVersion::as_str).join(", ")
    }
}

impl FromStr for CniVersion {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::incompatible_version(format!("unsupported CNI version {s:?}"))
                    .with_details(format!("weir supports {}", CniVersion::supported_list()))
            })
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_installer_knows_every_version() {
        let ours: Vec<&str> = super::CniVersion::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(ours, weir_node_state::plugin::CNI_VERSIONS);
    }

    use super::*;
    use crate::cni::error::code;

    #[test]
    fn parse_display_roundtrip() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>().unwrap(), v);
            assert_eq!(v.to_string(), v.as_str());
        }
        assert_eq!("0.4.0".parse::<CniVersion>().unwrap(), CniVersion::V0_4_0);
    }

    #[test]
    fn unsupported_versions_are_code_1() {
        for s in ["0.1.0", "0.2.0", "1.2.0", "1.0", "v1.0.0", "", "latest"] {
            let err = s.parse::<CniVersion>().unwrap_err();
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "{s:?}");
            assert!(err.details().contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
        }
    }

    #[test]
    fn ordering_follows_history() {
        assert!(CniVersion::V0_3_0 < CniVersion::V0_3_1);
        assert!(CniVersion::V0_3_1 < CniVersion::V0_4_0);
        assert!(CniVersion::V0_4_0 < CniVersion::V1_0_0);
        assert!(CniVersion::V1_0_0 < CniVersion::V1_1_0);
        assert_eq!(CniVersion::ALL.iter().max(), Some(&CniVersion::LATEST));
    }

    #[test]
    fn command_matrix() {
        use CniVersion::*;
        use Command::*;
        let expect = [
            (V0_3_0, [true, true, false, true, false, false]),
            (V0_3_1, [true, true, false, true, false, false]),
            (V0_4_0, [true, true, true, true, false, false]),
            (V1_0_0, [true, true, true, true, false, false]),
            (V1_1_0, [true, true, true, true, true, true]),
        ];
        for (v, row) in expect {
            let got = [Add, Del, Check, Version, Status, Gc].map(|c| v.allows(c));
            assert_eq!(got, row, "{v}");
        }
    }

    #[test]
    fn ips_version_field_only_before_1_0() {
        assert!(CniVersion::V0_3_0.ips_carry_version());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
        assert!(!CniVersion::V1_1_0.ips_carry_version());
    }

    #[test]
    fn sniff_reads_only_supported_versions() {
        assert_eq!(
            CniVersion::sniff(br#"{"cniVersion":"0.4.0"}"#),
            Some(CniVersion::V0_4_0)
        );
        assert_eq!(CniVersion::sniff(br#"{"cniVersion":"0.2.0"}"#), None);
        assert_eq!(CniVersion::sniff(b"{not json"), None);
        assert_eq!(CniVersion::sniff(b""), None);
    }
}
