//! CNI error results.
//!
//! Codes 0..=99 are reserved by the CNI spec; weir's own failures use 100+.
//! The runtime only sees the number and two strings, so every error carries a
//! short `msg` (what went wrong) and `details` (context for a human reading
//! kubelet/containerd logs).

use serde_json::{Value, json};

use super::version::CniVersion;

/// Error codes printed in the `code` field of an error result.
pub mod code {
    /// The config's `cniVersion` is not one weir speaks, or the command is
    /// not defined for that version (e.g. CHECK on 0.3.1).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A config field weir does not support; the message names key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container does not exist; tells the runtime no DEL is needed.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or malformed; the message
    /// names the variable.
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or another I/O step failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin is not decodable JSON (or not a JSON object).
    pub const DECODE_FAILED: u32 = 6;
    /// The config decoded but is semantically invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: weir cannot service ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS (1.1.0): not available, and existing pods may have limited
    /// connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// weir: splitting the pod's interface (rename, new veth pair, moving
    /// addresses/MAC/routes) failed; the original interface was restored.
    pub const SPLIT_FAILED: u32 = 100;
    /// weir: loading or attaching the tc eBPF programs failed; the split was
    /// undone.
    pub const EBPF_ATTACH_FAILED: u32 = 101;
    /// weir: reading or writing node state (stateDir, pinned maps) failed.
    pub const STATE_FAILED: u32 = 102;
    /// weir: opening or entering the pod's network namespace failed.
    pub const NETNS_FAILED: u32 = 103;
    /// weir: a failed ADD could not be rolled back; the pod's interface may
    /// be left broken. Distinct from 100 so operators can alert on it.
    pub const ROLLBACK_FAILED: u32 = 104;
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

/// A CNI error result, shaped like the spec's: a code (see [`code`]), a
/// short message and details. Build with the snake_case constructors, add
/// context with [`CniError::with_details`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", details_suffix(.details))]
pub struct CniError {
    code: u32,
    msg: String,
    details: String,
}

/// Result alias used throughout the CNI layer.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

macro_rules! constructors {
    ($($(#[$doc:meta])* $fn:ident => $code:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $fn(msg: impl Into<String>) -> Self {
                Self::new(code::$code, msg)
            }
        )*
    };
}

impl CniError {
    /// An error with `code` and `msg`, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    constructors! {
        incompatible_version => INCOMPATIBLE_VERSION;
        unsupported_field => UNSUPPORTED_FIELD;
        unknown_container => UNKNOWN_CONTAINER;
        invalid_env => INVALID_ENV;
        io => IO_FAILURE;
        decode => DECODE_FAILED;
        invalid_config => INVALID_CONFIG;
        try_again_later => TRY_AGAIN_LATER;
        plugin_not_available => PLUGIN_NOT_AVAILABLE;
        limited_connectivity => LIMITED_CONNECTIVITY;
        split_failed => SPLIT_FAILED;
        ebpf_attach_failed => EBPF_ATTACH_FAILED;
        state_failed => STATE_FAILED;
        netns_failed => NETNS_FAILED;
        rollback_failed => ROLLBACK_FAILED;
    }

    /// Replaces the details text.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The numeric code printed to the runtime (see [`code`]).
    pub fn code(&self) -> u32 {
        self.code
    }

    pub fn msg(&self) -> &str {
        &self.msg
    }

    pub fn details(&self) -> &str {
        &self.details
    }

    /// The error result object as the spec defines it. `details` is always
    /// present (possibly empty) so consumers need not special-case it.
    pub fn to_json(&self, version: CniVersion) -> Value {
        json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": self.msg(),
            "details": self.details(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_spec_code() {
        let cases: [(CniError, u32); 15] = [
            (CniError::incompatible_version("x"), 1),
            (CniError::unsupported_field("x"), 2),
            (CniError::unknown_container("x"), 3),
            (CniError::invalid_env("x"), 4),
            (CniError::io("x"), 5),
            (CniError::decode("x"), 6),
            (CniError::invalid_config("x"), 7),
            (CniError::try_again_later("x"), 11),
            (CniError::plugin_not_available("x"), 50),
            (CniError::limited_connectivity("x"), 51),
            (CniError::split_failed("x"), 100),
            (CniError::ebpf_attach_failed("x"), 101),
            (CniError::state_failed("x"), 102),
            (CniError::netns_failed("x"), 103),
            (CniError::rollback_failed("x"), 104),
        ];
        for (err, want) in cases {
            assert_eq!(err.code(), want, "{err:?}");
            assert_eq!(err.msg(), "x");
            assert_eq!(err.details(), "");
        }
    }

    #[test]
    fn to_json_has_the_four_spec_keys() {
        let err = CniError::invalid_config("bad subnet").with_details("10.0.0.0/31 too small");
        assert_eq!(
            err.to_json(CniVersion::V1_1_0),
            json!({
                "cniVersion": "1.1.0",
                "code": 7,
                "msg": "bad subnet",
                "details": "10.0.0.0/31 too small"
            })
        );
        assert_eq!(err.to_json(CniVersion::V0_3_1)["cniVersion"], "0.3.1");
    }

    #[test]
    fn display_joins_msg_and_details() {
        assert_eq!(CniError::io("reading stdin").to_string(), "reading stdin");
        assert_eq!(
            CniError::io("reading stdin")
                .with_details("broken pipe")
                .to_string(),
            "reading stdin: broken pipe"
        );
    }
}
