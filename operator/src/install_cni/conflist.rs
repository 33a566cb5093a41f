//! Which conflist the node's runtime uses, and weir's conflist made from it.
//!
//! Pure: the caller reads the directory ([`read_dir`]) and writes what
//! [`plan`] says.
//!
//! ## How the runtime chooses (containerd's go-cni over libcni)
//!
//! The files of the conf dir whose extension (Go's `filepath.Ext`: from the
//! last dot) is `.conf`, `.conflist` or `.json`, directories left out,
//! sorted by name (bytes). The first one is the network: a `.conflist` is
//! read as a list (`name` a string, `cniVersion` a string if present, a
//! non-empty `plugins` array of objects each with a `type`); a `.conf` or
//! `.json` as one plugin's config (an object with a `type`), made a list of
//! one under its `name` and `cniVersion`. containerd does not skip a first
//! file it cannot load: it fails (and the node has no usable CNI config), so
//! weir does the same: the primary is the first file, not the first valid
//! one, and when that file is invalid there is no primary.
//!
//! weir's own files are left out of the choice: they carry the top-level
//! key [`GENERATED_KEY`] (`"weir.dev/generated": true`), and a file at
//! weir's configured name that is not JSON at all is taken as a damaged
//! file of weir's (it is overwritten, never chained onto).

use serde_json::{Map, Value};

/// The top-level key marking a conflist weir's installer wrote.
pub const GENERATED_KEY: &str = "weir.dev/generated";
/// The top-level key naming the primary file a generated conflist came from.
pub const PRIMARY_KEY: &str = "weir.dev/primary";
/// The extensions the runtime reads (go-cni's `loadFromConfDir`).
pub const EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];
/// go-cni's default upper bound on a config file's size.
pub const MAX_FILE_SIZE: u64 = 2 * 1024 * 1024;
/// The CNI `type` of weir's plugin.
pub const WEIR_TYPE: &str = weir_node_state::plugin::TYPE;

/// weir's entry settings, as written into the conflist. Paths are the
/// node's (the plugin runs on the host), written as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeirSettings {
    /// `Fail` or `Ignore`.
    pub failure_policy: String,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    pub log_file: Option<String>,
    /// `tc` or `tcx`.
    pub attach: String,
    pub state_dir: String,
    pub bpf_root: String,
}

impl WeirSettings {
    /// weir's plugin entry: `{"type": "weir", ...}`.
    pub fn entry(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("type".into(), WEIR_TYPE.into());
        entry.insert("failurePolicy".into(), self.failure_policy.clone().into());
        entry.insert("logLevel".into(), self.log_level.clone().into());
        if let Some(file) = &self.log_file {
            entry.insert("logFile".into(), file.clone().into());
        }
        entry.insert("attach".into(), self.attach.clone().into());
        entry.insert("stateDir".into(), self.state_dir.clone().into());
        entry.insert("bpfRoot".into(), self.bpf_root.clone().into());
        Value::Object(entry)
    }

    /// Checks the entry against what the plugin accepts (its config parser
    /// refuses the same): a runtime would otherwise fail every pod's ADD.
    pub fn validate(&self, _name: &str, cni_version: &str) -> Result<(), String> {
        use weir_node_state::plugin;
        let refuse = |what: &str| Err(format!("weir would reject its entry: {what}"));
        if !plugin::CNI_VERSIONS.contains(&cni_version) {
            return refuse(&format!(
                "unsupported CNI version {cni_version:?} (it speaks {})",
                plugin::CNI_VERSIONS.join(", ")
            ));
        }
        if !plugin::FAILURE_POLICIES.contains(&self.failure_policy.as_str()) {
            return refuse(&format!("failurePolicy {:?}", self.failure_policy));
        }
        if !plugin::LOG_LEVELS.contains(&self.log_level.as_str()) {
            return refuse(&format!("logLevel {:?}", self.log_level));
        }
        if self.attach.parse::<weir_node_state::AttachMode>().is_err() {
            return refuse(&format!("attach {:?}", self.attach));
        }
        for (key, path) in [
            ("stateDir", Some(&self.state_dir)),
            ("bpfRoot", Some(&self.bpf_root)),
            ("logFile", self.log_file.as_ref()),
        ] {
            if let Some(path) = path
                && !path.starts_with('/')
            {
                return refuse(&format!("{key} must be an absolute path, got {path:?}"));
            }
        }
        Ok(())
    }
}

/// One file of the conf dir with a runtime extension, as read.
#[derive(Debug, Clone)]
pub struct ConfFile {
    pub name: String,
    /// The content, or why it could not be read.
    pub content: Result<Vec<u8>, String>,
}

/// Whether `name` has one of the runtime's extensions (Go's
/// `filepath.Ext`: everything from the last dot).
pub fn has_conf_extension(name: &str) -> bool {
    name.rfind('.')
        .is_some_and(|i| EXTENSIONS.contains(&&name[i..]))
}

/// Reads the conf dir the way the runtime lists it: files (not
/// directories) with a runtime extension, sorted by name. A missing
/// directory has no files (as in libcni).
pub fn read_dir(dir: &std::path::Path) -> std::io::Result<Vec<ConfFile>> {
    use std::io::Read as _;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !has_conf_extension(&name) || entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let content = std::fs::File::open(entry.path())
            .and_then(|f| {
                let mut bytes = Vec::new();
                f.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes)?;
                Ok(bytes)
            })
            .map_err(|e| e.to_string());
        files.push(ConfFile { name, content });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// A primary network, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Primary {
    /// The list's top-level keys (for a `.conf`, the made-up list's).
    pub list: Map<String, Value>,
    pub name: String,
    /// The version the runtime will use (`cniVersion`, or the highest of
    /// `cniVersions`); empty when neither is set.
    pub cni_version: String,
}

impl Primary {
    fn plugins(&self) -> &[Value] {
        self.list
            .get("plugins")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether the list already runs weir.
    pub fn has_weir(&self) -> bool {
        self.plugins()
            .iter()
            .any(|p| p.get("type").and_then(Value::as_str) == Some(WEIR_TYPE))
    }

    /// The plugin types in order, for logs (`flannel,portmap`).
    pub fn types(&self) -> String {
        self.plugins()
            .iter()
            .map(|p| p.get("type").and_then(Value::as_str).unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses one file as the runtime would, by its extension.
pub fn parse_primary(name: &str, bytes: &[u8]) -> Result<Primary, String> {
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(format!("larger than {MAX_FILE_SIZE} bytes"));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("empty file".into());
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    if name.ends_with(".conflist") {
        parse_list(obj)
    } else {
        // A single plugin's config, made a list of one (libcni's
        // ConfListFromConf).
        check_plugin(&obj).map_err(|e| {
            if obj.contains_key("plugins") {
                format!("{e} (a list in a file named .conf/.json is read as one plugin)")
            } else {
                e
            }
        })?;
        let name = optional_string(&obj, "name")?.unwrap_or_default();
        let version = optional_string(&obj, "cniVersion")?.unwrap_or_default();
        let mut list = Map::new();
        list.insert("name".into(), name.clone().into());
        list.insert("cniVersion".into(), version.clone().into());
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        Ok(Primary {
            list,
            name,
            cni_version: version,
        })
    }
}

fn parse_list(obj: Map<String, Value>) -> Result<Primary, String> {
    let name = match obj.get("name") {
        None => return Err("no name".into()),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("name is not a string".into()),
    };
    let mut version = optional_string(&obj, "cniVersion")?.unwrap_or_default();
    if let Some(versions) = obj.get("cniVersions") {
        let Value::Array(versions) = versions else {
            return Err("cniVersions is not a list".into());
        };
        for v in versions {
            let v = v.as_str().ok_or("cniVersions holds a non-string")?;
            if version_key(v) > version_key(&version) {
                version = v.to_owned();
            }
        }
    }
    let plugins = match obj.get("plugins") {
        None => {
            return Err(
                "no \"plugins\" list (plugin configs kept in a directory are not supported)".into(),
            );
        }
        Some(Value::Array(p)) => p,
        Some(_) => return Err("\"plugins\" is not a list".into()),
    };
    if plugins.is_empty() {
        return Err("no plugins in list".into());
    }
    for (i, plugin) in plugins.iter().enumerate() {
        let Value::Object(plugin) = plugin else {
            return Err(format!("plugin {i} is not a JSON object"));
        };
        check_plugin(plugin).map_err(|e| format!("plugin {i}: {e}"))?;
    }
    Ok(Primary {
        list: obj,
        name,
        cni_version: version,
    })
}

/// What libcni needs of one plugin's config.
fn check_plugin(obj: &Map<String, Value>) -> Result<(), String> {
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => {}
        Some(Value::String(_)) | None | Some(Value::Null) => return Err("missing 'type'".into()),
        Some(_) => return Err("'type' is not a string".into()),
    }
    optional_string(obj, "name")?;
    optional_string(obj, "cniVersion")?;
    Ok(())
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} is not a string")),
    }
}

/// `1.0.0` → (1, 0, 0), for picking the highest of `cniVersions`.
fn version_key(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Whether a file's content marks it as weir's (the generated key).
pub fn is_generated(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get(GENERATED_KEY).and_then(Value::as_bool))
        == Some(true)
}

/// weir's conflist: the primary's list with weir's entry appended last,
/// the same `name`, `cniVersion` and other top-level keys, plus the
/// markers. Pretty JSON with a final newline.
pub fn generate(primary: &Primary, primary_file: &str, settings: &WeirSettings) -> Vec<u8> {
    let mut list = primary.list.clone();
    let mut plugins = primary.plugins().to_vec();
    plugins.push(settings.entry());
    list.insert("plugins".into(), Value::Array(plugins));
    list.insert(GENERATED_KEY.into(), true.into());
    list.insert(PRIMARY_KEY.into(), primary_file.into());
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(list)).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

/// A name for weir's conflist that sorts before `primary`: `preferred`
/// when it does, else the primary's name up to its first byte above `0`,
/// then `0-weir.conflist` (`00-aaa.conflist` → `00-0-weir.conflist`).
pub fn target_name(preferred: &str, primary: &str) -> Result<String, String> {
    if preferred < primary {
        return Ok(preferred.to_owned());
    }
    let bytes = primary.as_bytes();
    if let Some(i) = bytes.iter().position(|&b| b > b'0') {
        // Every byte before i is ASCII (<= '0'), so i is a char boundary.
        let name = format!("{}0-weir.conflist", &primary[..i]);
        if name.as_str() < primary {
            return Ok(name);
        }
    }
    Err(format!(
        "no name found that sorts before {primary:?}; set --conflist-name to one that does"
    ))
}

/// What the directory should become.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub outcome: Outcome,
    /// weir's conflist to have (name, content), when there is one.
    pub write: Option<(String, Vec<u8>)>,
    /// weir's own files that must go (stale names, or all of them when
    /// there is nothing to chain onto).
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// weir's conflist chains weir onto `primary`.
    Chained {
        primary: String,
        target: String,
        /// The preferred name did not sort before the primary.
        renamed: bool,
        summary: String,
    },
    /// The primary already has weir in its list: weir writes nothing.
    AlreadyChained { primary: String },
    /// Nothing to chain onto; `reason` says why (for the log).
    NoPrimary { reason: String },
}

impl Outcome {
    /// Whether weir is in the node's CNI chain.
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            Outcome::Chained { .. } | Outcome::AlreadyChained { .. }
        )
    }
}

/// Decides weir's conflist from the files of the conf dir (sorted, as
/// [`read_dir`] gives them). `preferred` is weir's configured file name.
pub fn plan(files: &[ConfFile], preferred: &str, settings: &WeirSettings, dir: &str) -> Plan {
    let own = |f: &ConfFile| match &f.content {
        Ok(bytes) => {
            is_generated(bytes)
                || (f.name == preferred && serde_json::from_slice::<Value>(bytes).is_err())
        }
        Err(_) => false,
    };
    let own_files: Vec<&str> = files
        .iter()
        .filter(|f| own(f))
        .map(|f| f.name.as_str())
        .collect();
    let remove_all_but = |keep: Option<&str>| -> Vec<String> {
        own_files
            .iter()
            .filter(|n| Some(**n) != keep)
            .map(|n| n.to_string())
            .collect()
    };
    let no_primary = |reason: String| Plan {
        outcome: Outcome::NoPrimary {
            reason: format!("no valid primary CNI config in {dir}: {reason}"),
        },
        write: None,
        remove: remove_all_but(None),
    };

    let Some(first) = files.iter().find(|f| !own(f)) else {
        return no_primary(format!("no {} file besides weir's", EXTENSIONS.join("/")));
    };
    let primary = match &first.content {
        Err(e) => return no_primary(format!("{}: {e}", first.name)),
        Ok(bytes) => match parse_primary(&first.name, bytes) {
            Ok(p) => p,
            Err(e) => return no_primary(format!("{}: {e}", first.name)),
        },
    };
    if primary.has_weir() {
        return Plan {
            outcome: Outcome::AlreadyChained {
                primary: first.name.clone(),
            },
            write: None,
            remove: remove_all_but(None),
        };
    }
    if let Err(e) = settings.validate(&primary.name, &primary.cni_version) {
        return no_primary(format!(
            "{} (name {:?}, cniVersion {:?}): {e}",
            first.name, primary.name, primary.cni_version
        ));
    }
    let target = match target_name(preferred, &first.name) {
        Ok(t) => t,
        Err(e) => return no_primary(format!("{}: {e}", first.name)),
    };
    let content = generate(&primary, &first.name, settings);
    let summary = format!(
        "network {:?}, cniVersion {}, plugins {},{WEIR_TYPE}",
        primary.name,
        primary.cni_version,
        primary.types()
    );
    Plan {
        outcome: Outcome::Chained {
            primary: first.name.clone(),
            renamed: target != preferred,
            target: target.clone(),
            summary,
        },
        remove: remove_all_but(Some(&target)),
        write: Some((target, content)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    const DIR: &str = "/etc/cni/net.d";
    const PREFERRED: &str = "00-weir.conflist";

    fn settings() -> WeirSettings {
        WeirSettings {
            failure_policy: "Ignore".into(),
            log_level: "info".into(),
            log_file: Some("/var/log/weir/cni.log".into()),
            attach: "tcx".into(),
            state_dir: "/var/lib/weir".into(),
            bpf_root: "/sys/fs/bpf/weir".into(),
        }
    }

    fn file(name: &str, text: &str) -> ConfFile {
        ConfFile {
            name: name.into(),
            content: Ok(text.as_bytes().to_vec()),
        }
    }

    fn plan_of(files: &[ConfFile]) -> Plan {
        plan(files, PREFERRED, &settings(), DIR)
    }

    fn written(plan: &Plan) -> (String, Value) {
        let (name, bytes) = plan.write.clone().expect("a conflist to write");
        (name, serde_json::from_slice(&bytes).unwrap())
    }

    fn reason(plan: &Plan) -> String {
        match &plan.outcome {
            Outcome::NoPrimary { reason } => reason.clone(),
            other => panic!("expected no primary, got {other:?}"),
        }
    }

    #[test]
    fn flannel_conflist_gets_weir_appended_last() {
        let plan = plan_of(&[file("10-flannel.conflist", FLANNEL)]);
        let (name, list) = written(&plan);
        assert_eq!(name, PREFERRED);
        assert!(plan.remove.is_empty());
        assert_eq!(
            list,
            json!({
                "name": "cbr0",
                "cniVersion": "0.3.1",
                GENERATED_KEY: true,
                PRIMARY_KEY: "10-flannel.conflist",
                "plugins": [
                    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
                    {"type": "portmap", "capabilities": {"portMappings": true}},
                    {"type": "weir", "failurePolicy": "Ignore", "logLevel": "info",
                     "logFile": "/var/log/weir/cni.log", "attach": "tcx",
                     "stateDir": "/var/lib/weir", "bpfRoot": "/sys/fs/bpf/weir"}
                ]
            })
        );
        let Outcome::Chained {
            primary,
            target,
            renamed,
            summary,
        } = &plan.outcome
        else {
            panic!("{:?}", plan.outcome)
        };
        assert_eq!(
            (primary.as_str(), target.as_str(), *renamed),
            ("10-flannel.conflist", PREFERRED, false)
        );
        assert!(summary.contains("flannel,portmap,weir"), "{summary}");
        // What the runtime and weir read back from it.
        let generated = plan.write.as_ref().unwrap();
        assert!(is_generated(&generated.1));
        let again = parse_primary(&generated.0, &generated.1).unwrap();
        assert!(again.has_weir());
        assert_eq!(again.name, "cbr0");
    }

    #[test]
    fn generation_is_deterministic_and_ends_in_newline() {
        let a = plan_of(&[file("10-flannel.conflist", FLANNEL)]);
        let b = plan_of(&[file("10-flannel.conflist", FLANNEL)]);
        assert_eq!(a.write, b.write);
        assert!(a.write.unwrap().1.ends_with(b"}\n"));
    }

    #[test]
    fn without_log_file_the_entry_has_none() {
        let mut s = settings();
        s.log_file = None;
        let plan = plan(&[file("10-flannel.conflist", FLANNEL)], PREFERRED, &s, DIR);
        let (_, list) = written(&plan);
        assert!(list["plugins"][2].get("logFile").is_none());
        assert_eq!(list["plugins"][2]["type"], "weir");
    }

    #[test]
    fn other_top_level_keys_are_kept() {
        let text = r#"{"name":"net","cniVersion":"1.0.0","disableCheck":true,"plugins":[{"type":"bridge"},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#;
        let plan = plan_of(&[file("10-net.conflist", text)]);
        let (_, list) = written(&plan);
        assert_eq!(list["disableCheck"], true);
        assert_eq!(list["cniVersion"], "1.0.0");
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "bandwidth", "weir"]);
    }

    #[test]
    fn a_conf_primary_becomes_a_list_of_one() {
        let text = r#"{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.22.0.0/16"}}"#;
        let plan = plan_of(&[file("10-mynet.conf", text)]);
        let (_, list) = written(&plan);
        assert_eq!(list["name"], "mynet");
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(list["plugins"][0]["ipam"]["subnet"], "10.22.0.0/16");
        assert_eq!(list["plugins"][1]["type"], "weir");
        assert_eq!(list["plugins"].as_array().unwrap().len(), 2);
        // .json is read the same way.
        let plan = plan_of(&[file("10-mynet.json", text)]);
        assert_eq!(written(&plan).1["plugins"][0]["type"], "bridge");
    }

    #[test]
    fn a_list_in_a_conf_file_is_not_a_plugin() {
        let plan = plan_of(&[file("10-flannel.conf", FLANNEL)]);
        let reason = reason(&plan);
        assert!(
            reason.contains("10-flannel.conf: missing 'type'") && reason.contains(".conf/.json"),
            "{reason}"
        );
    }

    #[test]
    fn malformed_primary_gives_no_conflist_and_says_why() {
        let plan = plan_of(&[file(
            "10-flannel.conflist",
            "{\"name\": \"cbr0\", \"plugins\": [",
        )]);
        assert_eq!(plan.write, None);
        let reason = reason(&plan);
        assert!(
            reason.starts_with(
                "no valid primary CNI config in /etc/cni/net.d: 10-flannel.conflist: "
            ) && reason.contains("EOF while parsing"),
            "{reason}"
        );
        let plan = plan_of(&[file("10-flannel.conflist", "garbage")]);
        assert!(
            reason_of_contains(
                &plan,
                "10-flannel.conflist: expected value at line 1 column 1"
            ),
            "{:?}",
            plan.outcome
        );
        assert!(!plan.outcome.is_ready());
    }

    fn reason_of_contains(plan: &Plan, text: &str) -> bool {
        reason(plan).contains(text)
    }

    #[test]
    fn empty_files_and_empty_lists_are_not_primaries() {
        for (text, why) in [
            ("", "empty file"),
            ("  \n", "empty file"),
            ("[]", "not a JSON object"),
            ("null", "not a JSON object"),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[]}"#,
                "no plugins in list",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1"}"#,
                "no \"plugins\" list",
            ),
            (
                r#"{"cniVersion":"0.3.1","plugins":[{"type":"bridge"}]}"#,
                "no name",
            ),
            (
                r#"{"name":"x","plugins":{"type":"bridge"}}"#,
                "\"plugins\" is not a list",
            ),
            (
                r#"{"name":"x","plugins":[{"ipam":{}}]}"#,
                "plugin 0: missing 'type'",
            ),
            (
                r#"{"name":"x","plugins":[{"type":1}]}"#,
                "plugin 0: 'type' is not a string",
            ),
            (
                r#"{"name":"x","plugins":["bridge"]}"#,
                "plugin 0 is not a JSON object",
            ),
            (
                r#"{"name":7,"plugins":[{"type":"bridge"}]}"#,
                "name is not a string",
            ),
        ] {
            let plan = plan_of(&[file("10-flannel.conflist", text)]);
            assert_eq!(plan.write, None, "{text}");
            let r = reason(&plan);
            assert!(
                r.contains(&format!("10-flannel.conflist: {why}")),
                "{text}: {r}"
            );
        }
    }

    #[test]
    fn the_first_file_decides_even_when_invalid() {
        // containerd fails on an invalid first file rather than skipping
        // it, so weir does not chain onto a later one.
        let plan = plan_of(&[
            file("05-broken.conflist", "{"),
            file("10-flannel.conflist", FLANNEL),
        ]);
        assert!(reason_of_contains(&plan, "05-broken.conflist"));
    }

    #[test]
    fn no_files_or_unreadable_primary() {
        let plan = plan_of(&[]);
        assert!(reason_of_contains(
            &plan,
            "no .conf/.conflist/.json file besides weir's"
        ));
        let plan = plan_of(&[ConfFile {
            name: "10-flannel.conflist".into(),
            content: Err("Permission denied (os error 13)".into()),
        }]);
        assert!(reason_of_contains(
            &plan,
            "10-flannel.conflist: Permission denied"
        ));
    }

    #[test]
    fn weir_never_chains_onto_its_own_file() {
        let first = plan_of(&[file("10-flannel.conflist", FLANNEL)]);
        let (name, bytes) = first.write.clone().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        // Its own file sorts first; the plan is the same and keeps it.
        let again = plan_of(&[file(&name, &text), file("10-flannel.conflist", FLANNEL)]);
        assert_eq!(again, first);
        // Alone, its own file is no primary, and it goes.
        let alone = plan_of(&[file(&name, &text)]);
        assert_eq!(alone.write, None);
        assert_eq!(alone.remove, vec![name.clone()]);
        // A damaged file at weir's name is weir's (overwritten), while
        // valid JSON there without the marker is someone else's.
        let damaged = plan_of(&[
            file(PREFERRED, "{\"plugi"),
            file("10-flannel.conflist", FLANNEL),
        ]);
        assert_eq!(damaged.write, first.write);
        assert!(damaged.remove.is_empty());
        let damaged_alone = plan_of(&[file(PREFERRED, "")]);
        assert_eq!(damaged_alone.remove, vec![PREFERRED.to_string()]);
    }

    #[test]
    fn an_edited_own_file_is_rewritten() {
        let first = plan_of(&[file("10-flannel.conflist", FLANNEL)]);
        let (name, bytes) = first.write.clone().unwrap();
        let mut edited: Value = serde_json::from_slice(&bytes).unwrap();
        edited["plugins"][2]["logLevel"] = "debug".into();
        let plan = plan_of(&[
            file(&name, &edited.to_string()),
            file("10-flannel.conflist", FLANNEL),
        ]);
        assert_eq!(plan.write, first.write);
    }

    #[test]
    fn primary_with_weir_already_is_left_alone() {
        let text = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"},{"type":"weir"}]}"#;
        let plan = plan_of(&[file("10-flannel.conflist", text)]);
        assert_eq!(plan.write, None);
        assert_eq!(
            plan.outcome,
            Outcome::AlreadyChained {
                primary: "10-flannel.conflist".into()
            }
        );
        assert!(plan.outcome.is_ready());
        // A stale generated file of weir's would chain weir twice: it goes.
        let own = plan_of(&[file("10-flannel.conflist", FLANNEL)])
            .write
            .unwrap();
        let plan = plan_of(&[
            file(&own.0, std::str::from_utf8(&own.1).unwrap()),
            file("10-flannel.conflist", text),
        ]);
        assert_eq!(plan.remove, vec![own.0]);
        // So is weir's valid file stripped of its marker: someone else's now.
        let mut unmarked: Value = serde_json::from_slice(&own.1).unwrap();
        unmarked.as_object_mut().unwrap().remove(GENERATED_KEY);
        let plan = plan_of(&[
            file(PREFERRED, &unmarked.to_string()),
            file("10-flannel.conflist", FLANNEL),
        ]);
        assert_eq!(
            plan.outcome,
            Outcome::AlreadyChained {
                primary: PREFERRED.into()
            }
        );
        assert!(plan.remove.is_empty());
    }

    #[test]
    fn primary_sorting_before_the_preferred_name_gets_one_that_sorts_first() {
        for primary in [
            "00-aaa.conflist",
            "00-weir.conflist",
            "0.conf",
            "00-0.conflist",
            "-net.json",
        ] {
            let text = if primary.ends_with(".conflist") {
                FLANNEL.to_string()
            } else {
                r#"{"name":"n","cniVersion":"1.0.0","type":"bridge"}"#.to_string()
            };
            let plan = plan_of(&[file(primary, &text)]);
            let (name, _) = written(&plan);
            assert!(name.as_str() < primary, "{name} vs {primary}");
            assert!(
                name.ends_with(".conflist") && has_conf_extension(&name),
                "{name}"
            );
            assert_ne!(name, PREFERRED);
            let Outcome::Chained { renamed, .. } = plan.outcome else {
                panic!()
            };
            assert!(renamed);
        }
        assert_eq!(
            target_name(PREFERRED, "00-aaa.conflist").unwrap(),
            "00-0-weir.conflist"
        );
        assert_eq!(
            target_name(PREFERRED, "10-flannel.conflist").unwrap(),
            PREFERRED
        );
        // Nothing sorts before a name of only bytes <= '0' but a prefix.
        assert!(target_name(PREFERRED, "-.0").is_err());
    }

    #[test]
    fn a_stale_own_file_under_another_name_goes() {
        // weir's file was renamed for an earlier primary; now the primary
        // is flannel's and the preferred name fits again.
        let old = plan_of(&[file("00-aaa.conflist", FLANNEL)]).write.unwrap();
        let plan = plan_of(&[
            file(&old.0, std::str::from_utf8(&old.1).unwrap()),
            file("10-flannel.conflist", FLANNEL),
        ]);
        assert_eq!(written(&plan).0, PREFERRED);
        assert_eq!(plan.remove, vec![old.0]);
    }

    #[test]
    fn versions_weir_does_not_speak_are_refused() {
        let text = r#"{"name":"cbr0","cniVersion":"0.2.0","plugins":[{"type":"flannel"}]}"#;
        let plan = plan_of(&[file("10-flannel.conflist", text)]);
        assert!(
            reason_of_contains(&plan, "unsupported CNI version \"0.2.0\""),
            "{:?}",
            plan.outcome
        );
        // cniVersions: the highest counts.
        let text = r#"{"name":"cbr0","cniVersion":"0.3.1","cniVersions":["1.0.0","0.4.0"],"plugins":[{"type":"flannel"}]}"#;
        let primary = parse_primary("x.conflist", text.as_bytes()).unwrap();
        assert_eq!(primary.cni_version, "1.0.0");
    }

    #[test]
    fn bad_settings_are_refused_before_writing() {
        let mut s = settings();
        s.state_dir = "relative".into();
        let plan = plan(&[file("10-flannel.conflist", FLANNEL)], PREFERRED, &s, DIR);
        assert!(
            reason_of_contains(&plan, "stateDir must be an absolute path"),
            "{:?}",
            plan.outcome
        );
    }

    #[test]
    fn extensions_follow_go() {
        assert!(has_conf_extension("10-flannel.conflist"));
        assert!(has_conf_extension("a.conf"));
        assert!(has_conf_extension("a.json"));
        assert!(has_conf_extension(".conf"));
        assert!(!has_conf_extension("10-flannel.conflist.bak"));
        assert!(!has_conf_extension(".00-weir.conflist.1.weir-install-tmp"));
        assert!(!has_conf_extension("conflist"));
    }

    #[test]
    fn read_dir_lists_like_the_runtime() {
        let dir = std::env::temp_dir().join(format!("weir-conflist-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.conf")).unwrap();
        std::fs::write(dir.join("20-b.json"), "{}").unwrap();
        std::fs::write(dir.join("10-a.conflist"), "x").unwrap();
        std::fs::write(dir.join("05-c.conflist.bak"), "x").unwrap();
        let names: Vec<String> = read_dir(&dir)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["10-a.conflist", "20-b.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_dir(&dir).unwrap().is_empty());
    }
}
