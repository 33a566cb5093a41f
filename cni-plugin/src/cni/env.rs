//! The `CNI_*` environment variables.
//!
//! Parsing goes through an injected getter so tests never touch the process
//! environment (which is global and shared between test threads).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::{CniError, Result};
use super::version::CniVersion;

/// Linux IFNAMSIZ (16) minus the terminating NUL.
pub const IFNAME_MAX_LEN: usize = 15;

/// Length of the prefixes the split puts in front of `CNI_IFNAME`
/// (`wx-`, `wi-`).
pub const SPLIT_PREFIX_LEN: usize = 3;

/// The operation requested through `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The first spec version defining this command.
    pub fn introduced_in(self) -> CniVersion {
        match self {
            Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
            Command::Check => CniVersion::V0_4_0,
            Command::Status | Command::Gc => CniVersion::V1_1_0,
        }
    }

    /// Commands that act on one attachment `(CNI_CONTAINERID, CNI_IFNAME)`.
    pub fn targets_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    fn requires_netns(self) -> bool {
        // DEL must succeed after the netns is gone, so the runtime may omit it.
        matches!(self, Command::Add | Command::Check)
    }
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(
                    CniError::invalid_env(format!("unknown CNI_COMMAND {other:?}"))
                        .with_details("expected one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
                );
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_ARGS`: `K=V;K=V`. The Kubernetes keys are pulled out; anything else
/// is kept in order. Unknown keys are never an error (as if
/// `IgnoreUnknown=1` were always set): a chained plugin must not fail pods
/// over arguments meant for another plugin in the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_infra_container_id: Option<String>,
    /// All other pairs, including `IgnoreUnknown`, in input order.
    pub other: Vec<(String, String)>,
}

/// The pod identity kubelet passes in `CNI_ARGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: Option<&'a str>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs> {
        let mut args = CniArgs::default();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: {pair:?} is not a KEY=VALUE pair"
                )));
            };
            if key.is_empty() {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: empty key in {pair:?}"
                )));
            }
            let slot = match key {
                "K8S_POD_NAMESPACE" => &mut args.pod_namespace,
                "K8S_POD_NAME" => &mut args.pod_name,
                "K8S_POD_UID" => &mut args.pod_uid,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut args.pod_infra_container_id,
                _ => {
                    args.other.push((key.to_owned(), value.to_owned()));
                    continue;
                }
            };
            // Empty values carry no identity; keep them out so `pod()` stays
            // honest.
            *slot = (!value.is_empty()).then(|| value.to_owned());
        }
        Ok(args)
    }

    /// The pod, when kubelet named it (namespace and name both present).
    pub fn pod(&self) -> Option<PodRef<'_>> {
        Some(PodRef {
            namespace: self.pod_namespace.as_deref()?,
            name: self.pod_name.as_deref()?,
            uid: self.pod_uid.as_deref(),
        })
    }

    /// Value of an unmodelled key (last one wins, like libcni).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.other
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The validated `CNI_*` environment of one invocation.
///
/// Only the variables the command uses are read: VERSION, STATUS and GC
/// ignore `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_ARGS`, so a
/// stale value there cannot fail them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// Getter for the real process environment. Non-UTF-8 values are converted
/// lossily so that they fail validation loudly instead of reading as unset.
pub fn process_getter(key: &str) -> Option<String> {
    std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
}

impl Env {
    /// Reads and validates the variables `CNI_COMMAND` asks for. Empty values
    /// count as unset, as in libcni.
    pub fn from_getter(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let var = |key: &str| get(key).filter(|v| !v.is_empty());

        let command: Command = var("CNI_COMMAND")
            .ok_or_else(|| CniError::invalid_env("required env variable CNI_COMMAND missing"))?
            .parse()?;

        let mut env = Env {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: CniArgs::default(),
            path: var("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        if !command.targets_attachment() {
            return Ok(env);
        }

        let mut missing = Vec::new();
        match var("CNI_CONTAINERID") {
            Some(id) => {
                validate_container_id(&id)?;
                env.container_id = Some(id);
            }
            None => missing.push("CNI_CONTAINERID"),
        }
        match var("CNI_NETNS") {
            Some(ns) => {
                validate_netns(&ns)?;
                env.netns = Some(PathBuf::from(ns));
            }
            None if command.requires_netns() => missing.push("CNI_NETNS"),
            None => {}
        }
        match var("CNI_IFNAME") {
            Some(name) => {
                validate_ifname(&name)?;
                env.ifname = Some(name);
            }
            None => missing.push("CNI_IFNAME"),
        }
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "required env variables [{}] missing",
                missing.join(",")
            ))
            .with_details(format!("CNI_COMMAND={command}")));
        }
        if let Some(args) = var("CNI_ARGS") {
            env.args = CniArgs::parse(&args)?;
        }
        Ok(env)
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Env> {
        Env::from_getter(|k| map.get(k).cloned())
    }

    /// `CNI_CONTAINERID`; always present after ADD/DEL/CHECK validation.
    pub fn container_id(&self) -> Result<&str> {
        self.container_id
            .as_deref()
            .ok_or_else(|| missing_for(self.command, "CNI_CONTAINERID"))
    }

    /// `CNI_IFNAME`; always present after ADD/DEL/CHECK validation.
    pub fn ifname(&self) -> Result<&str> {
        self.ifname
            .as_deref()
            .ok_or_else(|| missing_for(self.command, "CNI_IFNAME"))
    }

    /// `CNI_NETNS`; always present after ADD/CHECK validation, optional on DEL.
    pub fn netns(&self) -> Result<&Path> {
        self.netns
            .as_deref()
            .ok_or_else(|| missing_for(self.command, "CNI_NETNS"))
    }
}

fn missing_for(command: Command, var: &str) -> CniError {
    CniError::invalid_env(format!("{var} is not set"))
        .with_details(format!("CNI_COMMAND={command}"))
}

/// Spec rule: non-empty, starts alphanumeric, then alphanumerics, `_`, `.`,
/// `-`. Checked because the id ends up in state file names.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            CniError::invalid_env(format!("invalid CNI_CONTAINERID {id:?}")).with_details(
                "must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
            ),
        )
    }
}

/// Linux interface-name rules (the kernel's `dev_valid_name`, plus Unicode
/// whitespace as libcni rejects it).
pub fn validate_ifname(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if name.len() > IFNAME_MAX_LEN {
        Some(format!("longer than {IFNAME_MAX_LEN} bytes"))
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..'".to_owned())
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("must not contain '/', ':' or whitespace".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => {
            Err(CniError::invalid_env(format!("invalid CNI_IFNAME {name:?}")).with_details(why))
        }
    }
}

/// True when `wx-<ifname>` would exceed IFNAMSIZ; the plugin then passes the
/// pod through unsplit instead of failing it.
pub fn too_long_to_split(ifname: &str) -> bool {
    ifname.len() + SPLIT_PREFIX_LEN > IFNAME_MAX_LEN
}

fn validate_netns(ns: &str) -> Result<()> {
    // A relative path would resolve against the plugin's cwd, which is never
    // what the runtime meant.
    if ns.starts_with('/') {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!("invalid CNI_NETNS {ns:?}"))
            .with_details("must be an absolute path to a network namespace"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::code;

    const CID: &str = "3f1b2c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
    const NETNS: &str = "/var/run/netns/cni-5e2f6c1a-0b7d-4c1e-9f3a-2d8b7e6c5a41";
    const K8S_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9f8b6c5-x2k4q;\
K8S_POD_INFRA_CONTAINER_ID=3f1b2c4d;K8S_POD_UID=0b6f7c2e-91a4-4f3b-8d2e-5c6a7b8d9e0f";

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_map(&map)
    }

    fn full(command: &str) -> Vec<(&str, &str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", CID),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", K8S_ARGS),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]
    }

    fn without<'a>(mut v: Vec<(&'a str, &'a str)>, key: &str) -> Vec<(&'a str, &'a str)> {
        v.retain(|(k, _)| *k != key);
        v
    }

    #[test]
    fn add_with_everything() {
        let env = env_of(&full("ADD")).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id().unwrap(), CID);
        assert_eq!(env.netns().unwrap(), Path::new(NETNS));
        assert_eq!(env.ifname().unwrap(), "eth0");
        assert_eq!(
            env.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        let pod = env.args.pod().unwrap();
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.name, "cart-7d9f8b6c5-x2k4q");
        assert_eq!(pod.uid, Some("0b6f7c2e-91a4-4f3b-8d2e-5c6a7b8d9e0f"));
        assert_eq!(env.args.pod_infra_container_id.as_deref(), Some("3f1b2c4d"));
        assert_eq!(
            env.args.other,
            vec![("IgnoreUnknown".to_owned(), "1".to_owned())]
        );
        assert_eq!(env.args.get("IgnoreUnknown"), Some("1"));
    }

    #[test]
    fn commands_parse_and_unknown_is_code_4() {
        for (s, c) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
            ("STATUS", Command::Status),
            ("GC", Command::Gc),
        ] {
            assert_eq!(s.parse::<Command>().unwrap(), c);
            assert_eq!(c.to_string(), s);
        }
        for bad in ["add", "DELETE", "UPDATE"] {
            let err = env_of(&[("CNI_COMMAND", bad)]).unwrap_err();
            assert_eq!(err.code(), code::INVALID_ENV);
            assert!(err.msg().contains("CNI_COMMAND"), "{err}");
        }
        let err = env_of(&[]).unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert!(err.msg().contains("CNI_COMMAND"));
    }

    #[test]
    fn missing_netns_fails_add_and_check_but_not_del() {
        for cmd in ["ADD", "CHECK"] {
            let err = env_of(&without(full(cmd), "CNI_NETNS")).unwrap_err();
            assert_eq!(err.code(), code::INVALID_ENV, "{cmd}");
            assert!(err.msg().contains("CNI_NETNS"), "{err}");
        }
        let del = env_of(&without(full("DEL"), "CNI_NETNS")).unwrap();
        assert_eq!(del.netns, None);
        assert_eq!(del.netns().unwrap_err().code(), code::INVALID_ENV);
        assert_eq!(del.ifname().unwrap(), "eth0");
        // Runtimes often send an empty CNI_NETNS on DEL rather than omitting it.
        let mut empty = without(full("DEL"), "CNI_NETNS");
        empty.push(("CNI_NETNS", ""));
        assert_eq!(env_of(&empty).unwrap().netns, None);
    }

    #[test]
    fn missing_variables_are_all_named() {
        let err = env_of(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert_eq!(
            err.msg(),
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        let err = env_of(&without(full("DEL"), "CNI_CONTAINERID")).unwrap_err();
        assert_eq!(
            err.msg(),
            "required env variables [CNI_CONTAINERID] missing"
        );
        let err = env_of(&without(full("DEL"), "CNI_IFNAME")).unwrap_err();
        assert_eq!(err.msg(), "required env variables [CNI_IFNAME] missing");
    }

    #[test]
    fn version_status_gc_need_nothing_and_ignore_junk() {
        for cmd in ["VERSION", "STATUS", "GC"] {
            let env = env_of(&[
                ("CNI_COMMAND", cmd),
                ("CNI_IFNAME", "bad/name"),
                ("CNI_ARGS", "garbage"),
            ])
            .unwrap();
            assert_eq!(env.command.as_str(), cmd);
            assert_eq!(env.ifname, None);
            assert_eq!(env.args, CniArgs::default());
        }
    }

    #[test]
    fn bad_ifname_is_code_4() {
        for bad in [
            "this-is-sixteen!",
            ".",
            "..",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
            "eth\u{a0}0",
        ] {
            let mut vars = without(full("ADD"), "CNI_IFNAME");
            vars.push(("CNI_IFNAME", bad));
            let err = env_of(&vars).unwrap_err();
            assert_eq!(err.code(), code::INVALID_ENV, "{bad:?}");
            assert!(err.msg().contains("CNI_IFNAME"), "{err}");
        }
        for good in ["eth0", "net1", "a", "fifteen-chars-x", "eth0.100", "é"] {
            assert!(validate_ifname(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn ifname_limit_counts_bytes() {
        // 8 two-byte chars = 16 bytes.
        assert!(validate_ifname("éééééééé").is_err());
        assert!(validate_ifname("ééééééé").is_ok());
    }

    #[test]
    fn bad_container_id_is_code_4() {
        for bad in [
            "-abc",
            "_abc",
            ".abc",
            "abc def",
            "abc/def",
            "abc;rm",
            "ünïcode",
        ] {
            let mut vars = without(full("DEL"), "CNI_CONTAINERID");
            vars.push(("CNI_CONTAINERID", bad));
            let err = env_of(&vars).unwrap_err();
            assert_eq!(err.code(), code::INVALID_ENV, "{bad:?}");
            assert!(err.msg().contains("CNI_CONTAINERID"), "{err}");
        }
        for good in ["a", "0", CID, "my-pod_1.2"] {
            assert!(validate_container_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn relative_netns_is_code_4() {
        let mut vars = without(full("ADD"), "CNI_NETNS");
        vars.push(("CNI_NETNS", "netns/cni-1"));
        let err = env_of(&vars).unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert!(err.msg().contains("CNI_NETNS"));
    }

    #[test]
    fn split_length_helper() {
        assert!(!too_long_to_split("eth0"));
        assert!(!too_long_to_split("twelve-chars")); // wx-twelve-chars = 15
        assert!(too_long_to_split("thirteen-char")); // 16
        assert!(too_long_to_split("fifteen-chars-x"));
    }

    #[test]
    fn cni_args_parsing() {
        let args = CniArgs::parse("K8S_POD_NAME=a;;FOO=bar=baz;K8S_POD_NAME=b;EMPTY=").unwrap();
        assert_eq!(args.pod_name.as_deref(), Some("b"));
        assert_eq!(args.pod(), None, "namespace missing");
        assert_eq!(args.get("FOO"), Some("bar=baz"));
        assert_eq!(args.get("EMPTY"), Some(""));
        assert_eq!(args.get("NOPE"), None);

        let err = CniArgs::parse("K8S_POD_NAME=a;oops").unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert!(err.msg().contains("CNI_ARGS"));
        assert_eq!(CniArgs::parse("=x").unwrap_err().code(), code::INVALID_ENV);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn malformed_cni_args_fail_add() {
        let mut vars = without(full("ADD"), "CNI_ARGS");
        vars.push(("CNI_ARGS", "K8S_POD_NAME"));
        let err = env_of(&vars).unwrap_err();
        assert_eq!(err.code(), code::INVALID_ENV);
        assert!(err.msg().contains("CNI_ARGS"));
    }
}
