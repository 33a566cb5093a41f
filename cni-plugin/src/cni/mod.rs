//! The CNI protocol layer: environment, stdin config, `prevResult`, versions,
//! errors and stdout output. Pure logic; nothing here touches the network.
//!
//! ```text
//! let stdin = /* all of stdin */;
//! match Request::parse(env::process_getter, &stdin) {
//!     Ok(req) => match req.command { ... },
//!     Err(e) => println!("{}", output::error(&e, CniVersion::sniff(&stdin))),
//! }
//! ```

// The binary uses a subset of this API at any time; the rest is kept so the
// protocol surface stays complete and tested.
#![allow(dead_code)]

pub mod config;
pub mod env;
pub mod error;
pub mod output;
pub mod result;
pub mod version;

// Convenience re-exports; which ones the binary uses changes as it grows.
#[allow(unused_imports)]
pub use config::{Attachment, FailurePolicy, FaultInjection, LogLevel, NetConf};
#[allow(unused_imports)]
pub use env::{CniArgs, Command, Env, PodRef};
#[allow(unused_imports)]
pub use error::{CniError, Result, code};
#[allow(unused_imports)]
pub use result::{Interface, IpConfig, IpFamily, PrevResult, Route};
#[allow(unused_imports)]
pub use version::CniVersion;

use config::PrevResultMode;

/// One validated invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: Command,
    /// The version to answer in: the config's, or for VERSION the one asked
    /// about (latest when none or unsupported).
    pub version: CniVersion,
    pub env: Env,
    /// `None` only for VERSION, which has no network configuration.
    pub config: Option<NetConf>,
}

pub const PREV_RESULT_REQUIRED: &str =
    "prevResult is required: weir must be chained after an IPAM/interface plugin";

impl Request {
    /// Validates environment and stdin together, in libcni's order:
    /// environment (4), then config decoding (6/7/1), then whether the
    /// command exists in the config's version (1), then per-command needs.
    pub fn parse(getenv: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request> {
        let env = Env::from_getter(getenv)?;
        let command = env.command;

        if command == Command::Version {
            // A probe must always be answered, so an empty, garbled or
            // unknown-version stdin falls back to the latest version.
            let version = CniVersion::sniff(stdin).unwrap_or(CniVersion::LATEST);
            return Ok(Request {
                command,
                version,
                env,
                config: None,
            });
        }

        let mode = if command == Command::Del {
            PrevResultMode::Lenient
        } else {
            PrevResultMode::Strict
        };
        let config = NetConf::parse_with(stdin, mode)?;
        let version = config.cni_version;
        if !version.allows(command) {
            return Err(CniError::incompatible_version(format!(
                "config version {version} does not allow {command}"
            ))
            .with_details(format!(
                "{command} needs cniVersion {} or later",
                command.introduced_in()
            )));
        }
        match command {
            Command::Add | Command::Check if config.prev_result.is_none() => {
                return Err(CniError::invalid_config(PREV_RESULT_REQUIRED));
            }
            _ => {}
        }
        Ok(Request {
            command,
            version,
            env,
            config: Some(config),
        })
    }

    /// The network configuration (present for every command but VERSION).
    pub fn config(&self) -> Result<&NetConf> {
        self.config.as_ref().ok_or_else(|| {
            CniError::invalid_config(format!("{} has no network configuration", self.command))
        })
    }

    /// `prevResult`; guaranteed for ADD and CHECK, optional for DEL.
    pub fn prev_result(&self) -> Result<&PrevResult> {
        self.config()?
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::invalid_config(PREV_RESULT_REQUIRED))
    }

    /// `Fail` unless the config says otherwise (and for VERSION).
    pub fn failure_policy(&self) -> FailurePolicy {
        self.config
            .as_ref()
            .map(|c| c.failure_policy)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::result::tests::{SANDBOX, bridge_result};
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use std::path::Path;

    const CID: &str = "9a8b7c6d5e4f";

    fn env(command: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", CID),
            ("CNI_NETNS", SANDBOX),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0",
            ),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn stdin(version: CniVersion, prev: bool) -> Vec<u8> {
        let mut v = json!({
            "cniVersion": version.as_str(),
            "name": "cbr0",
            "type": "weir",
            "failurePolicy": "Ignore"
        });
        if prev {
            v["prevResult"] = bridge_result(version);
        }
        v.to_string().into_bytes()
    }

    fn parse(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Request> {
        Request::parse(|k| env.get(k).cloned(), stdin)
    }

    #[test]
    fn add_for_every_version() {
        for v in CniVersion::ALL {
            let req = parse(&env("ADD"), &stdin(v, true)).unwrap();
            assert_eq!(req.command, Command::Add);
            assert_eq!(req.version, v);
            assert_eq!(req.env.container_id().unwrap(), CID);
            assert_eq!(req.env.netns().unwrap(), Path::new(SANDBOX));
            assert_eq!(req.env.args.pod().unwrap().name, "cart-0");
            assert_eq!(req.failure_policy(), FailurePolicy::Ignore);
            let prev = req.prev_result().unwrap();
            assert_eq!(prev.pod_ips("eth0").len(), 2);
            let printed: Value =
                serde_json::from_str(&output::add_result(prev, req.version)).unwrap();
            assert_eq!(printed, bridge_result(v));
        }
    }

    #[test]
    fn add_without_prev_result_is_code_7() {
        for v in CniVersion::ALL {
            let err = parse(&env("ADD"), &stdin(v, false)).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{v}");
            assert_eq!(err.msg(), PREV_RESULT_REQUIRED);
        }
        let err = parse(&env("CHECK"), &stdin(CniVersion::V1_0_0, false)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_CONFIG);
    }

    #[test]
    fn del_needs_neither_netns_nor_prev_result() {
        let mut e = env("DEL");
        e.remove("CNI_NETNS");
        let req = parse(&e, &stdin(CniVersion::V0_3_1, false)).unwrap();
        assert_eq!(req.command, Command::Del);
        assert_eq!(req.env.netns, None);
        assert_eq!(req.env.ifname().unwrap(), "eth0");
        assert_eq!(req.prev_result().unwrap_err().code(), code::INVALID_CONFIG);
    }

    #[test]
    fn del_tolerates_unreadable_prev_result() {
        let mut v: Value = serde_json::from_slice(&stdin(CniVersion::V1_0_0, false)).unwrap();
        v["prevResult"] = json!({"ips": [{"address": "garbage"}]});
        let req = parse(&env("DEL"), v.to_string().as_bytes()).unwrap();
        let conf = req.config().unwrap();
        assert_eq!(conf.prev_result, None);
        assert_eq!(
            conf.prev_result_ignored.as_ref().unwrap().code(),
            code::INVALID_CONFIG
        );
        // ADD with the same input fails.
        assert_eq!(
            parse(&env("ADD"), v.to_string().as_bytes())
                .unwrap_err()
                .code(),
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn missing_netns_on_add_is_code_4() {
        let mut e = env("ADD");
        e.remove("CNI_NETNS");
        let err = parse(&e, &stdin(CniVersion::V1_0_0, true)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert!(err.msg().contains("CNI_NETNS"));
    }

    #[test]
    fn env_errors_come_before_config_errors() {
        let mut e = env("ADD");
        e.insert("CNI_IFNAME".into(), "eth0:1".into());
        let err = parse(&e, b"{broken").unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
    }

    #[test]
    fn bad_json_is_code_6() {
        let err = parse(&env("ADD"), b"{\"cniVersion\":").unwrap_err();
        assert_eq!(err.code(), code::DECODE_FAILED);
        let err = parse(&env("DEL"), b"").unwrap_err();
        assert_eq!(err.code(), code::DECODE_FAILED);
    }

    #[test]
    fn wrong_type_is_code_7() {
        let mut v: Value = serde_json::from_slice(&stdin(CniVersion::V1_0_0, true)).unwrap();
        v["type"] = json!("bridge");
        let err = parse(&env("ADD"), v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.code(), code::INVALID_CONFIG);
    }

    #[test]
    fn check_needs_0_4_0() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1] {
            let err = parse(&env("CHECK"), &stdin(v, true)).unwrap_err();
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "{v}");
            assert_eq!(
                err.msg(),
                format!("config version {v} does not allow CHECK")
            );
            assert_eq!(err.details(), "CHECK needs cniVersion 0.4.0 or later");
        }
        for v in [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0] {
            assert_eq!(
                parse(&env("CHECK"), &stdin(v, true)).unwrap().command,
                Command::Check
            );
        }
    }

    #[test]
    fn gc_and_status_need_1_1_0() {
        let gc_stdin = |v: CniVersion| {
            let mut s: Value = serde_json::from_slice(&stdin(v, false)).unwrap();
            s[config::VALID_ATTACHMENTS_KEY] = json!([{"containerID": CID, "ifname": "eth0"}]);
            s.to_string().into_bytes()
        };
        for v in [CniVersion::V0_4_0, CniVersion::V1_0_0] {
            let err = parse(&env("GC"), &gc_stdin(v)).unwrap_err();
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "GC {v}");
            assert_eq!(err.msg(), format!("config version {v} does not allow GC"));
            let err = parse(&env("STATUS"), &stdin(v, false)).unwrap_err();
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "STATUS {v}");
        }
        let gc = parse(&env("GC"), &gc_stdin(CniVersion::V1_1_0)).unwrap();
        assert_eq!(
            gc.config().unwrap().valid_attachments.as_deref(),
            Some(
                &[Attachment {
                    container_id: CID.into(),
                    ifname: "eth0".into()
                }][..]
            )
        );
        let status = parse(
            &[("CNI_COMMAND".to_owned(), "STATUS".to_owned())].into(),
            &stdin(CniVersion::V1_1_0, false),
        )
        .unwrap();
        assert_eq!(status.command, Command::Status);
        assert_eq!(status.env.container_id, None);
    }

    #[test]
    fn gc_without_attachment_list_means_none_is_valid() {
        // libcni leaves the key out when the runtime passes no list, and the
        // reference plugins then release everything; weir agrees.
        let gc = parse(&env("GC"), &stdin(CniVersion::V1_1_0, false)).unwrap();
        assert_eq!(gc.config().unwrap().valid_attachments, None);
    }

    #[test]
    fn version_accepts_empty_and_odd_stdin() {
        let only_cmd: HashMap<String, String> =
            [("CNI_COMMAND".to_owned(), "VERSION".to_owned())].into();
        let cases: [(&[u8], CniVersion); 6] = [
            (b"", CniVersion::LATEST),
            (b"  \n", CniVersion::LATEST),
            (br#"{"cniVersion":"0.3.1"}"#, CniVersion::V0_3_1),
            (br#"{"cniVersion":"1.0.0"}"#, CniVersion::V1_0_0),
            (br#"{"cniVersion":"0.2.0"}"#, CniVersion::LATEST),
            (b"{oops", CniVersion::LATEST),
        ];
        for (input, want) in cases {
            let req = parse(&only_cmd, input).unwrap();
            assert_eq!(req.command, Command::Version);
            assert_eq!(req.version, want, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(req.config, None);
            assert_eq!(req.failure_policy(), FailurePolicy::Fail);
            assert_eq!(req.config().unwrap_err().code(), code::INVALID_CONFIG);
        }
        let out: Value =
            serde_json::from_str(&output::version(parse(&only_cmd, b"").unwrap().version)).unwrap();
        assert_eq!(
            out,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn unsupported_version_is_code_1_for_every_command() {
        let mut v: Value = serde_json::from_slice(&stdin(CniVersion::V1_0_0, true)).unwrap();
        v["cniVersion"] = json!("0.2.0");
        for cmd in ["ADD", "DEL", "CHECK"] {
            let err = parse(&env(cmd), v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "{cmd}");
        }
    }

    #[test]
    fn error_output_uses_sniffed_version() {
        let input = br#"{"cniVersion":"0.4.0","name":"cbr0","type":"weir"}"#;
        let err = parse(&env("ADD"), input).unwrap_err();
        let out: Value =
            serde_json::from_str(&output::error(&err, CniVersion::sniff(input))).unwrap();
        assert_eq!(
            out,
            json!({"cniVersion": "0.4.0", "code": 7, "msg": PREV_RESULT_REQUIRED, "details": ""})
        );
    }
}
