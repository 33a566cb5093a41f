//! The plugin configuration weir reads on stdin: its entry of the conflist,
//! as the runtime rewrote it (`cniVersion`, `name`, `prevResult` injected).
//!
//! Keys are read from a `serde_json::Value` by hand rather than derived so
//! that every error names the offending key, and so that syntax errors
//! (code 6) stay apart from semantic ones (code 7).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

use super::error::{CniError, Result};
use super::result::PrevResult;
use super::version::CniVersion;

/// The `type` weir answers to in a conflist.
pub const PLUGIN_TYPE: &str = weir_node_state::plugin::TYPE;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weir";
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/weir";
/// The GC key listing attachments the runtime still considers alive.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The name an early 1.1.0 draft used; libcni still sends both.
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// What ADD does when weir itself fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Report the error; the pod does not start.
    #[default]
    Fail,
    /// Restore the pod's interface and pass `prevResult` through: the pod
    /// starts unobserved rather than not at all.
    Ignore,
}

impl FromStr for FailurePolicy {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "Fail" => Ok(FailurePolicy::Fail),
            "Ignore" => Ok(FailurePolicy::Ignore),
            other => Err(
                CniError::invalid_config(format!("unsupported failurePolicy {other:?}"))
                    .with_details("expected \"Fail\" or \"Ignore\""),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Lowercase name, usable as a `tracing` level filter.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(
                CniError::invalid_config(format!("unsupported logLevel {s:?}"))
                    .with_details("expected error, warn, info, debug or trace"),
            ),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Test-only hook: make ADD fail right after a named step to exercise
/// rollback. The step is checked when the config is read: a name that is no
/// step makes the config invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultInjection {
    /// ADD fails right after this step (and restores the pod).
    pub fail_at: Option<crate::split::Step>,
    /// ADD stops right after this step: it writes the step's name into the
    /// FIFO `pauseFifo` (blocking until a reader opens it) and then waits
    /// forever, for a test to `kill -9` it there.
    pub pause_at: Option<crate::split::Step>,
    pub pause_fifo: Option<PathBuf>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    pub prev_result: Option<PrevResult>,
    /// Set when a DEL came with a `prevResult` weir could not read: DEL is
    /// best-effort, so the error is kept for logging instead of failing.
    pub prev_result_ignored: Option<CniError>,
    pub failure_policy: FailurePolicy,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    /// `attach`: how the split's programs are hooked, `"tc"` (clsact, the
    /// default) or `"tcx"` (TCX links, kernel >= 6.6, ~2 RCU grace periods
    /// more per ADD).
    pub attach_mode: weir_ebpf::AttachMode,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    pub fault_injection: Option<FaultInjection>,
    /// Only meaningful for GC. `None` when the runtime sent no list at all,
    /// which libcni does when it has no valid attachments to name: GC then
    /// releases every attachment of the network, as the reference plugins do.
    /// Releasing is safe for weir: a released pod gets its own eth0 back.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// How to treat an unreadable `prevResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrevResultMode {
    Strict,
    /// Drop it and record why (DEL).
    Lenient,
}

impl NetConf {
    /// Parses and validates a plugin configuration.
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        NetConf::parse_with(stdin, PrevResultMode::Strict)
    }

    pub(crate) fn parse_with(stdin: &[u8], mode: PrevResultMode) -> Result<NetConf> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::decode("failed to decode network configuration").with_details(e.to_string())
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::decode("failed to decode network configuration")
                .with_details("expected a JSON object"));
        };

        let cni_version: CniVersion = required_str(&obj, "cniVersion")?.parse()?;
        let name = required_str(&obj, "name")?.to_owned();
        validate_network_name(&name)?;
        let plugin_type = required_str(&obj, "type")?.to_owned();
        if plugin_type != PLUGIN_TYPE {
            return Err(CniError::invalid_config(format!(
                "type is {plugin_type:?}, expected {PLUGIN_TYPE:?}"
            )));
        }

        let (prev_result, prev_result_ignored) = match obj.get("prevResult") {
            None | Some(Value::Null) => (None, None),
            Some(v) => match (PrevResult::parse(v, cni_version), mode) {
                (Ok(p), _) => (Some(p), None),
                (Err(e), PrevResultMode::Strict) => return Err(e),
                (Err(e), PrevResultMode::Lenient) => (None, Some(e)),
            },
        };

        let failure_policy = optional_str(&obj, "failurePolicy")?
            .map(str::parse)
            .transpose()?
            .unwrap_or_default();
        let attach_mode = optional_str(&obj, "attach")?
            .map(|s| {
                s.parse::<weir_ebpf::AttachMode>()
                    .map_err(|e| CniError::invalid_config(format!("attach: {e}")))
            })
            .transpose()?
            .unwrap_or_default();
        let log_level = optional_str(&obj, "logLevel")?
            .map(str::parse)
            .transpose()?
            .unwrap_or_default();

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            prev_result,
            prev_result_ignored,
            failure_policy,
            state_dir: optional_path(&obj, "stateDir")?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            bpf_root: optional_path(&obj, "bpfRoot")?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_ROOT)),
            attach_mode,
            log_file: optional_path(&obj, "logFile")?,
            log_level,
            fault_injection: parse_fault_injection(&obj)?,
            valid_attachments: parse_valid_attachments(&obj)?,
        })
    }
}

fn optional_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(CniError::invalid_config(format!("{key} must be a string"))
            .with_details(format!("got {other}"))),
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str> {
    optional_str(obj, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CniError::invalid_config(format!("{key} is required")))
}

/// Paths must be absolute: the plugin's cwd is whatever the runtime had.
fn optional_path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>> {
    match optional_str(obj, key)? {
        None => Ok(None),
        Some(s) if Path::new(s).is_absolute() => Ok(Some(PathBuf::from(s))),
        Some(s) => Err(
            CniError::invalid_config(format!("{key} must be an absolute path"))
                .with_details(format!("got {s:?}")),
        ),
    }
}

fn parse_fault_injection(obj: &Map<String, Value>) -> Result<Option<FaultInjection>> {
    let inner = match obj.get("faultInjection") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(inner)) => inner,
        Some(_) => return Err(CniError::invalid_config("faultInjection must be an object")),
    };
    let step = |key: &str| match optional_str(inner, key) {
        Ok(None) => Ok(None),
        Ok(Some(s)) if !s.is_empty() => s
            .parse::<crate::split::Step>()
            .map(Some)
            .map_err(|e| CniError::invalid_config(format!("faultInjection.{key}: {e}"))),
        _ => Err(CniError::invalid_config(format!(
            "faultInjection.{key} must be a non-empty string"
        ))),
    };
    let fail_at = step("failAt")?;
    let pause_at = step("pauseAt")?;
    if fail_at.is_none() && pause_at.is_none() {
        return Err(CniError::invalid_config(
            "faultInjection.failAt or faultInjection.pauseAt must be a non-empty string",
        ));
    }
    let pause_fifo = optional_path(inner, "pauseFifo")?;
    if pause_at.is_some() && pause_fifo.is_none() {
        return Err(CniError::invalid_config(
            "faultInjection.pauseAt needs faultInjection.pauseFifo (an absolute path)",
        ));
    }
    Ok(Some(FaultInjection {
        fail_at,
        pause_at,
        pause_fifo,
    }))
}

/// The spec's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`. The
/// name becomes a directory of node state, so nothing else may pass.
pub fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            CniError::invalid_config(format!("invalid network name {name:?}")).with_details(
                "must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
            ),
        )
    }
}

fn parse_valid_attachments(obj: &Map<String, Value>) -> Result<Option<Vec<Attachment>>> {
    let Some((key, value)) = [VALID_ATTACHMENTS_KEY, LEGACY_ATTACHMENTS_KEY]
        .into_iter()
        .find_map(|k| obj.get(k).map(|v| (k, v)))
    else {
        return Ok(None);
    };
    let list = match value {
        // libcni marshals an empty Go slice as null: "nothing is valid".
        Value::Null => return Ok(Some(Vec::new())),
        Value::Array(list) => list,
        _ => return Err(CniError::invalid_config(format!("{key} must be an array"))),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let bad = || {
                CniError::invalid_config(format!(
                    "{key}[{i}] must be an object with string containerID and ifname"
                ))
                .with_details(format!("got {entry}"))
            };
            let entry = entry.as_object().ok_or_else(bad)?;
            let field = |k| entry.get(k).and_then(Value::as_str).map(str::to_owned);
            Ok(Attachment {
                container_id: field("containerID").ok_or_else(bad)?,
                ifname: field("ifname").ok_or_else(bad)?,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::code;
    use crate::cni::result::tests::bridge_result;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn minimal() -> Value {
        json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "weir"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = minimal();
        v[key] = value;
        v
    }

    #[test]
    fn defaults() {
        let c = conf(minimal()).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.name, "cbr0");
        assert_eq!(c.plugin_type, "weir");
        assert_eq!(c.prev_result, None);
        assert_eq!(c.failure_policy, FailurePolicy::Fail);
        assert_eq!(c.state_dir, Path::new("/var/lib/weir"));
        assert_eq!(c.bpf_root, Path::new("/sys/fs/bpf/weir"));
        assert_eq!(c.attach_mode, weir_ebpf::AttachMode::Netlink);
        assert_eq!(c.log_file, None);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.fault_injection, None);
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn all_weir_keys_and_unknown_keys() {
        let c = conf(json!({
            "cniVersion": "1.1.0",
            "name": "cbr0",
            "type": "weir",
            "failurePolicy": "Ignore",
            "stateDir": "/run/weir-test/state",
            "bpfRoot": "/sys/fs/bpf/weir-test",
            "attach": "tcx",
            "logFile": "/var/log/weir/cni.log",
            "logLevel": "DEBUG",
            "faultInjection": {"failAt": "move-routes"},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080}], "anything": [1, 2]},
            "capabilities": {"portMappings": true},
            "args": {"cni": {"labels": []}},
            "somethingNew": {"x": 1},
            "prevResult": bridge_result(CniVersion::V1_1_0)
        }))
        .unwrap();
        assert_eq!(c.failure_policy, FailurePolicy::Ignore);
        assert_eq!(c.state_dir, Path::new("/run/weir-test/state"));
        assert_eq!(c.bpf_root, Path::new("/sys/fs/bpf/weir-test"));
        assert_eq!(c.attach_mode, weir_ebpf::AttachMode::Tcx);
        assert_eq!(
            c.log_file.as_deref(),
            Some(Path::new("/var/log/weir/cni.log"))
        );
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(
            c.fault_injection.unwrap().fail_at,
            Some(crate::split::Step::MoveRoutes)
        );
        assert_eq!(c.prev_result.unwrap().interfaces.len(), 3);
    }

    #[test]
    fn fault_injection_names_a_step_or_the_config_is_invalid() {
        let c = conf(with("faultInjection", json!({"failAt": "attach"}))).unwrap();
        assert_eq!(
            c.fault_injection.and_then(|f| f.fail_at),
            Some(crate::split::Step::Attach)
        );
        for bad in [
            json!({"failAt": "after-rename"}),
            json!({"failAt": ""}),
            json!("attach"),
        ] {
            let err = conf(with("faultInjection", bad.clone())).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{bad}");
        }
        let err = conf(with("faultInjection", json!({"failAt": "after-rename"}))).unwrap_err();
        assert!(err.to_string().contains("known steps"), "{err}");
    }

    #[test]
    fn attach_mode_values() {
        for (text, mode) in [
            ("tc", weir_ebpf::AttachMode::Netlink),
            ("tcx", weir_ebpf::AttachMode::Tcx),
        ] {
            assert_eq!(conf(with("attach", json!(text))).unwrap().attach_mode, mode);
        }
        let err = conf(with("attach", json!("xdp"))).unwrap_err();
        assert_eq!(err.code(), code::INVALID_CONFIG);
        assert!(
            err.msg().contains("xdp") && err.msg().contains("tcx"),
            "{err:?}"
        );
    }

    #[test]
    fn valid_attachments_for_gc() {
        let c = conf(with(
            VALID_ATTACHMENTS_KEY,
            json!([
                {"containerID": "abc123", "ifname": "eth0"},
                {"containerID": "def456", "ifname": "net1", "extra": true}
            ]),
        ))
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![
                Attachment {
                    container_id: "abc123".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "def456".into(),
                    ifname: "net1".into()
                },
            ]
        );
        assert_eq!(
            conf(with(VALID_ATTACHMENTS_KEY, json!([])))
                .unwrap()
                .valid_attachments,
            Some(vec![])
        );
        assert_eq!(
            conf(with(VALID_ATTACHMENTS_KEY, json!(null)))
                .unwrap()
                .valid_attachments,
            Some(vec![])
        );
        let legacy = conf(with(
            LEGACY_ATTACHMENTS_KEY,
            json!([{"containerID": "x", "ifname": "eth0"}]),
        ))
        .unwrap();
        assert_eq!(legacy.valid_attachments.unwrap()[0].container_id, "x");
        let mut both = with(
            VALID_ATTACHMENTS_KEY,
            json!([{"containerID": "new", "ifname": "eth0"}]),
        );
        both[LEGACY_ATTACHMENTS_KEY] = json!([{"containerID": "old", "ifname": "eth0"}]);
        assert_eq!(
            conf(both).unwrap().valid_attachments.unwrap()[0].container_id,
            "new"
        );
        for bad in [
            json!({}),
            json!([{"containerID": "a"}]),
            json!([{"containerID": 1, "ifname": "eth0"}]),
            json!(["a"]),
        ] {
            let err = conf(with(VALID_ATTACHMENTS_KEY, bad.clone())).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{bad}");
            assert!(err.msg().contains(VALID_ATTACHMENTS_KEY));
        }
    }

    #[test]
    fn bad_json_is_code_6() {
        for bad in [
            &b"{"[..],
            b"",
            b"   ",
            b"not json",
            b"{\"cniVersion\": \"1.0.0\",}",
            b"[1,2]",
            b"\"weir\"",
        ] {
            let err = NetConf::parse(bad).unwrap_err();
            assert_eq!(
                err.code(),
                code::DECODE_FAILED,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(err.msg(), "failed to decode network configuration");
        }
    }

    #[test]
    fn wrong_type_is_code_7() {
        let err = conf(with("type", json!("bridge"))).unwrap_err();
        assert_eq!(err.code(), code::INVALID_CONFIG);
        assert_eq!(err.msg(), "type is \"bridge\", expected \"weir\"");
    }

    #[test]
    fn missing_required_keys_are_code_7() {
        for key in ["cniVersion", "name", "type"] {
            let mut v = minimal();
            v.as_object_mut().unwrap().remove(key);
            let err = conf(v).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{key}");
            assert_eq!(err.msg(), format!("{key} is required"));

            let err = conf(with(key, json!(""))).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{key} empty");
            let err = conf(with(key, json!(1))).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{key} number");
            assert_eq!(err.msg(), format!("{key} must be a string"));
        }
    }

    #[test]
    fn unsupported_cni_version_is_code_1() {
        for v in ["0.2.0", "0.1.0", "2.0.0"] {
            let err = conf(with("cniVersion", json!(v))).unwrap_err();
            assert_eq!(err.code(), code::INCOMPATIBLE_VERSION, "{v}");
        }
    }

    #[test]
    fn failure_policy_values() {
        assert_eq!(
            conf(with("failurePolicy", json!("Fail")))
                .unwrap()
                .failure_policy,
            FailurePolicy::Fail
        );
        for bad in [json!("ignore"), json!("Retry"), json!(""), json!(true)] {
            let err = conf(with("failurePolicy", bad.clone())).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{bad}");
            assert!(err.msg().contains("failurePolicy"), "{err}");
        }
    }

    #[test]
    fn bad_weir_keys_are_code_7() {
        let cases = [
            ("stateDir", json!("relative/dir"), "stateDir"),
            ("stateDir", json!(""), "stateDir"),
            ("bpfRoot", json!(5), "bpfRoot"),
            ("logFile", json!("weir.log"), "logFile"),
            ("logLevel", json!("loud"), "logLevel"),
            ("faultInjection", json!("after-rename"), "faultInjection"),
            ("faultInjection", json!({}), "faultInjection.failAt"),
            (
                "faultInjection",
                json!({"failAt": ""}),
                "faultInjection.failAt",
            ),
            (
                "faultInjection",
                json!({"failAt": 3}),
                "faultInjection.failAt",
            ),
        ];
        for (key, value, needle) in cases {
            let err = conf(with(key, value.clone())).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{key}={value}");
            assert!(err.msg().contains(needle), "{key}={value}: {err}");
        }
    }

    #[test]
    fn network_names_follow_the_spec() {
        for good in ["cbr0", "k8s-pod-network", "a.b_c-1", "0"] {
            assert_eq!(conf(with("name", json!(good))).unwrap().name, good);
        }
        for bad in ["..", ".", "../x", "-net", "_n", "a/b", "net work", "né"] {
            let err = conf(with("name", json!(bad))).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{bad:?}");
            assert!(err.msg().contains("network name"), "{err}");
        }
    }

    #[test]
    fn pause_at_needs_a_fifo() {
        let c = conf(with(
            "faultInjection",
            json!({"pauseAt": "rename", "pauseFifo": "/run/x.fifo"}),
        ))
        .unwrap();
        let f = c.fault_injection.unwrap();
        assert_eq!(f.pause_at, Some(crate::split::Step::Rename));
        assert_eq!(f.fail_at, None);
        let err = conf(with("faultInjection", json!({"pauseAt": "rename"}))).unwrap_err();
        assert!(err.msg().contains("pauseFifo"), "{err}");
    }

    #[test]
    fn null_optional_keys_mean_default() {
        let c = conf(json!({
            "cniVersion": "0.4.0", "name": "n", "type": "weir",
            "prevResult": null, "failurePolicy": null, "stateDir": null, "faultInjection": null
        }))
        .unwrap();
        assert_eq!(c.prev_result, None);
        assert_eq!(c.failure_policy, FailurePolicy::Fail);
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn bad_prev_result_strict_vs_lenient() {
        let v = with("prevResult", json!({"ips": [{"address": "nope"}]}));
        let bytes = v.to_string();
        let err = NetConf::parse(bytes.as_bytes()).unwrap_err();
        assert_eq!(err.code(), code::INVALID_CONFIG);
        let c = NetConf::parse_with(bytes.as_bytes(), PrevResultMode::Lenient).unwrap();
        assert_eq!(c.prev_result, None);
        assert_eq!(c.prev_result_ignored.unwrap().code(), code::INVALID_CONFIG);
    }

    #[test]
    fn log_level_names() {
        for (s, l) in [
            ("error", LogLevel::Error),
            ("Warning", LogLevel::Warn),
            ("trace", LogLevel::Trace),
        ] {
            assert_eq!(s.parse::<LogLevel>().unwrap(), l);
        }
        assert_eq!(LogLevel::Warn.to_string(), "warn");
    }
}
