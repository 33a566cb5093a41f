//! The exact JSON weir prints on stdout. CHECK, DEL, STATUS and GC print
//! nothing on success, so they have no function here.
//!
//! Strings carry no trailing newline; the caller decides how to write them.

use serde_json::json;

use super::error::CniError;
use super::result::PrevResult;
use super::version::CniVersion;

/// ADD success: `prevResult` as received, `cniVersion` set to the request's.
/// Also what `failurePolicy: Ignore` prints after a failed split.
pub fn add_result(prev: &PrevResult, version: CniVersion) -> String {
    prev.to_json(version).to_string()
}

/// VERSION success.
pub fn version(version: CniVersion) -> String {
    json!({
        "cniVersion": version.as_str(),
        "supportedVersions": CniVersion::ALL.map(CniVersion::as_str),
    })
    .to_string()
}

/// An error result. `version` is the request's when known; without one
/// (the request failed before its version was read) the latest is used, as
/// libcni does.
pub fn error(err: &CniError, version: Option<CniVersion>) -> String {
    err.to_json(version.unwrap_or(CniVersion::LATEST))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::result::tests::bridge_result;
    use serde_json::Value;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn add_result_echoes_prev_result_for_every_version() {
        for v in CniVersion::ALL {
            let input = bridge_result(v);
            let prev = PrevResult::parse(&input, v).unwrap();
            assert_eq!(parse(&add_result(&prev, v)), input, "{v}");
        }
    }

    #[test]
    fn version_output() {
        assert_eq!(
            version(CniVersion::V0_4_0),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(parse(&version(CniVersion::LATEST))["cniVersion"], "1.1.0");
    }

    #[test]
    fn error_output() {
        let err = CniError::invalid_env("required env variables [CNI_NETNS] missing");
        assert_eq!(
            parse(&error(&err, Some(CniVersion::V0_3_1))),
            json!({
                "cniVersion": "0.3.1",
                "code": 4,
                "msg": "required env variables [CNI_NETNS] missing",
                "details": ""
            })
        );
        assert_eq!(parse(&error(&err, None))["cniVersion"], "1.1.0");
    }
}
