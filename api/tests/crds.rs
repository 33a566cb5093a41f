//! The CRD manifests in crds/ are what the types generate (golden files),
//! `crdgen --check` catches stale ones, and the schema has what weir relies
//! on: names, printer columns, the status subresource, the node-keyed
//! observers list, defaults and CEL rules.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
};
use weir_api::{self as crd, Manifest};

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn manifest(file: &str) -> Manifest {
    crd::manifests()
        .into_iter()
        .find(|m| m.file_name == file)
        .unwrap_or_else(|| panic!("no manifest {file}"))
}

fn version(crd: &CustomResourceDefinition) -> &CustomResourceDefinitionVersion {
    assert_eq!(crd.spec.versions.len(), 1);
    &crd.spec.versions[0]
}

fn root(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    version(crd)
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("an openAPIV3Schema")
}

/// The schema at `path` (property names; `[]` steps into array items).
fn at<'a>(schema: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    let mut s = schema;
    for (i, step) in path.iter().enumerate() {
        s = if *step == "[]" {
            match s.items.as_ref() {
                Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) => {
                    items
                }
                other => panic!("{:?} has no single items schema: {other:?}", &path[..i]),
            }
        } else {
            s.properties
                .as_ref()
                .and_then(|p| p.get(*step))
                .unwrap_or_else(|| panic!("no property {step} at {:?}", &path[..i]))
        };
    }
    s
}

/// The CEL rules at a schema node, with their messages.
fn rules(s: &JSONSchemaProps) -> Vec<(String, String)> {
    s.x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| (r.rule.clone(), r.message.clone().unwrap_or_default()))
        .collect()
}

fn has_rule(s: &JSONSchemaProps, rule_part: &str, message_part: &str) -> bool {
    rules(s)
        .iter()
        .any(|(r, m)| r.contains(rule_part) && m.contains(message_part))
}

#[test]
fn crds_in_the_repository_are_the_generated_ones() {
    let manifests = crd::manifests();
    let names: Vec<&str> = manifests.iter().map(|m| m.file_name.as_str()).collect();
    assert_eq!(
        names,
        ["captureprofiles.weir.dev.yaml", "podflows.weir.dev.yaml"]
    );
    for m in &manifests {
        let path = crds_dir().join(&m.file_name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            on_disk == m.yaml,
            "{} is stale: regenerate with `cargo run -p weir-api --bin crdgen`",
            path.display()
        );
        // And the YAML reads back as the same CRD.
        let body = on_disk
            .strip_prefix(crd::GENERATED_HEADER)
            .expect("generated header");
        let parsed: CustomResourceDefinition = serde_yaml_ng::from_str(body).unwrap();
        assert_eq!(parsed, m.crd, "{}", m.file_name);
    }
}

#[test]
fn crdgen_check_names_stale_files_and_writes_fresh_ones() {
    let crdgen = env!("CARGO_BIN_EXE_crdgen");
    let tmp = std::env::temp_dir().join(format!("weir-crdgen-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);

    // Missing files: --check fails and names them.
    let out = Command::new(crdgen)
        .args(["--check", "--dir"])
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("captureprofiles.weir.dev.yaml") && err.contains("podflows.weir.dev.yaml"),
        "{err}"
    );

    // Written files equal the repository's, and pass --check.
    let out = Command::new(crdgen)
        .arg("--dir")
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in crd::manifests() {
        assert_eq!(
            std::fs::read_to_string(tmp.join(&m.file_name)).unwrap(),
            m.yaml
        );
    }
    let out = Command::new(crdgen)
        .args(["--check", "--dir"])
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One edited file: --check names that one, with the line.
    let pf = tmp.join("podflows.weir.dev.yaml");
    let text = std::fs::read_to_string(&pf)
        .unwrap()
        .replace("name: Packets", "name: Pkts");
    std::fs::write(&pf, text).unwrap();
    let out = Command::new(crdgen)
        .args(["--check", "--dir"])
        .arg(&tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("STALE") && err.contains("podflows.weir.dev.yaml") && err.contains("Pkts"),
        "{err}"
    );
    assert!(!err.contains("captureprofiles.weir.dev.yaml:"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn names_scope_and_status_subresource() {
    for (file, kind, plural, short) in [
        (
            "captureprofiles.weir.dev.yaml",
            "CaptureProfile",
            "captureprofiles",
            vec!["cprof", "cp"],
        ),
        ("podflows.weir.dev.yaml", "PodFlow", "podflows", vec!["pf"]),
    ] {
        let crd = manifest(file).crd;
        assert_eq!(crd.spec.group, "weir.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&short.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["weir".to_string()][..])
        );
        let v = version(&crd);
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind}: status subresource"
        );
        assert!(
            root(&crd)
                .properties
                .as_ref()
                .unwrap()
                .contains_key("status")
        );
    }
}

/// (name, jsonPath, priority) of the printer columns.
fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, i32)> {
    version(crd)
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| {
            (
                c.name.to_uppercase(),
                c.json_path.clone(),
                c.priority.unwrap_or(0),
            )
        })
        .collect()
}

/// Every printer column's path exists in the schema (a typo would print
/// an empty column, not fail).
fn assert_columns_resolve(crd: &CustomResourceDefinition) {
    for (name, path, _) in columns(crd) {
        if path.starts_with(".metadata.") {
            continue;
        }
        // `conditions[?(@.type=="Ready")]` selects items of a list.
        let mut path = path;
        while let Some(start) = path.find("[?(") {
            let end = start + path[start..].find(")]").expect("closed filter") + 2;
            path.replace_range(start..end, ".[]");
        }
        let steps: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
        let _ = at(root(crd), &steps);
        assert!(!steps.is_empty(), "{name}: {path}");
    }
}

#[test]
fn podflow_columns_print_the_conversation() {
    let crd = manifest("podflows.weir.dev.yaml").crd;
    let cols = columns(&crd);
    let narrow: Vec<&str> = cols
        .iter()
        .filter(|c| c.2 == 0)
        .map(|c| c.0.as_str())
        .collect();
    assert_eq!(
        narrow,
        [
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "PORT",
            "PACKETS",
            "BYTES",
            "VNI",
            "LAST-SEEN"
        ]
    );
    let wide: Vec<&str> = cols
        .iter()
        .filter(|c| c.2 == 1)
        .map(|c| c.0.as_str())
        .collect();
    assert_eq!(wide, ["SRC-NODE", "DST-NODE", "OUTER-SRC", "OUTER-DST"]);
    let path = |n: &str| cols.iter().find(|c| c.0 == n).unwrap().1.clone();
    assert_eq!(path("SOURCE"), ".spec.source.display");
    assert_eq!(path("PACKETS"), ".status.packets");
    assert_eq!(path("VNI"), ".status.vxlan.vni");
    let last_seen = version(&crd)
        .additional_printer_columns
        .iter()
        .flatten()
        .find(|c| c.name == "Last-Seen")
        .unwrap();
    assert_eq!(last_seen.type_, "date");
    assert_columns_resolve(&crd);
}

#[test]
fn captureprofile_columns_print_readiness_and_counts() {
    let crd = manifest("captureprofiles.weir.dev.yaml").crd;
    let cols = columns(&crd);
    let narrow: Vec<&str> = cols
        .iter()
        .filter(|c| c.2 == 0)
        .map(|c| c.0.as_str())
        .collect();
    assert_eq!(narrow, ["READY", "MATCHED", "FLOWS", "AGE"]);
    assert_eq!(
        cols[0].1,
        r#".status.conditions[?(@.type=="Ready")].status"#
    );
    assert_columns_resolve(&crd);
}

#[test]
fn podflow_observers_are_a_list_keyed_by_node() {
    let crd = manifest("podflows.weir.dev.yaml").crd;
    let observers = at(root(&crd), &["status", "observers"]);
    assert_eq!(observers.type_.as_deref(), Some("array"));
    assert_eq!(observers.x_kubernetes_list_type.as_deref(), Some("map"));
    assert_eq!(
        observers.x_kubernetes_list_map_keys.as_deref(),
        Some(&["node".to_string()][..])
    );
    let entry = at(observers, &["[]"]);
    assert!(
        entry.required.iter().flatten().any(|r| r == "node"),
        "the key must be required"
    );
    for field in ["forward", "reverse", "firstSeen", "lastSeen", "vxlan"] {
        let _ = at(entry, &[field]);
    }
    for field in [
        "vni",
        "outerSource",
        "outerDestination",
        "encapPackets",
        "encapBytes",
        "decapPackets",
        "decapBytes",
        "lossPackets",
    ] {
        let _ = at(root(&crd), &["status", "vxlan", field]);
    }
    for field in ["forward", "reverse"] {
        let _ = at(root(&crd), &["status", "totals", field, "packets"]);
    }
    assert_eq!(
        at(root(&crd), &["status", "lastSeen"]).format.as_deref(),
        Some("date-time")
    );
}

#[test]
fn captureprofile_map_pressure_is_a_list_keyed_by_node() {
    let crd = manifest("captureprofiles.weir.dev.yaml").crd;
    let nodes = at(root(&crd), &["status", "nodes"]);
    assert_eq!(nodes.type_.as_deref(), Some("array"));
    assert_eq!(nodes.x_kubernetes_list_type.as_deref(), Some("map"));
    assert_eq!(
        nodes.x_kubernetes_list_map_keys.as_deref(),
        Some(&["node".to_string()][..])
    );
    let entry = at(nodes, &["[]"]);
    assert!(
        entry.required.iter().flatten().any(|r| r == "node"),
        "the key must be required"
    );
    for field in [
        "lostSamples",
        "failedUpdates",
        "lruEvictions",
        "nodeFailedUpdates",
        "nodeLruEvictions",
    ] {
        assert_eq!(at(entry, &[field]).type_.as_deref(), Some("integer"));
    }
    let _ = at(root(&crd), &["status", "lostSamples"]);
}

#[test]
fn captureprofile_has_defaults_and_cel_rules() {
    let crd = manifest("captureprofiles.weir.dev.yaml").crd;
    let spec = at(root(&crd), &["spec"]);
    let default = |f: &str| at(spec, &[f]).default.as_ref().map(|d| d.0.clone());
    assert_eq!(default("flushInterval"), Some(serde_json::json!("10s")));
    assert_eq!(default("flowTTL"), Some(serde_json::json!("5m")));
    assert_eq!(default("maxPodFlows"), Some(serde_json::json!(500)));
    assert_eq!(default("mode"), Some(serde_json::json!("Counters")));
    assert_eq!(
        spec.required.as_deref(),
        Some(&["podSelector".to_string()][..])
    );

    assert!(has_rule(
        at(spec, &["maxPodFlows"]),
        "self >= 1 && self <= 10000",
        "maxPodFlows must be between 1 and 10000"
    ));
    assert!(has_rule(
        at(spec, &["peerCIDRs"]),
        "isCIDR",
        "peerCIDRs must be CIDRs"
    ));
    assert!(has_rule(
        at(spec, &["mode"]),
        "self != 'Pcap'",
        "not supported yet"
    ));
    assert!(has_rule(
        at(spec, &["flushInterval"]),
        "duration('1s')",
        "flushInterval"
    ));
    assert!(has_rule(
        at(spec, &["flowTTL"]),
        "duration('24h')",
        "flowTTL"
    ));
    assert!(has_rule(at(spec, &["ports"]), "p <= 65535", "ports"));
    assert!(has_rule(
        spec,
        "duration(self.flowTTL) >= duration(self.flushInterval)",
        "flowTTL must be at least flushInterval"
    ));
    assert!(has_rule(
        spec,
        "self.protocols.exists",
        "ports select TCP or UDP"
    ));
    let modes = at(spec, &["mode"]).enum_.clone().unwrap();
    assert_eq!(
        modes,
        [serde_json::json!("Counters"), serde_json::json!("Pcap")]
            .map(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON)
    );
    assert_eq!(
        at(spec, &["peerCIDRs"]).x_kubernetes_list_type.as_deref(),
        Some("set")
    );
    assert_eq!(
        at(root(&crd), &["status", "conditions"])
            .x_kubernetes_list_map_keys
            .as_deref(),
        Some(&["type".to_string()][..])
    );
}

#[test]
fn podflow_has_cel_rules() {
    let crd = manifest("podflows.weir.dev.yaml").crd;
    let spec = at(root(&crd), &["spec"]);
    assert!(has_rule(spec, "self == oldSelf", "immutable"));
    assert!(has_rule(
        spec,
        "has(self.destination.port)",
        "destination.port is required for TCP and UDP"
    ));
    assert!(has_rule(
        at(spec, &["destination", "port"]),
        "self <= 65535",
        "port must be between 1 and 65535"
    ));
    assert!(has_rule(
        at(spec, &["source"]),
        "self.__namespace__ + '/' + self.pod",
        "display"
    ));
    assert!(has_rule(at(spec, &["destination"]), "self.ip", "display"));
    assert!(has_rule(
        at(spec, &["source", "ip"]),
        "isIP(self)",
        "IPv4 or IPv6"
    ));
    assert!(has_rule(
        at(spec, &["destination", "ip"]),
        "isIP(self)",
        "IPv4 or IPv6"
    ));
    let required = spec.required.clone().unwrap();
    for f in ["source", "destination", "protocol", "profile"] {
        assert!(required.iter().any(|r| r == f), "{f} required");
    }
}

/// Every CEL rule of a schema, with its path.
fn all_rules(s: &JSONSchemaProps, path: &str, out: &mut Vec<(String, String)>) {
    for (rule, _) in rules(s) {
        out.push((path.to_owned(), rule));
    }
    for (name, p) in s.properties.iter().flatten() {
        all_rules(p, &format!("{path}.{name}"), out);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) =
        s.items.as_ref()
    {
        all_rules(items, &format!("{path}[]"), out);
    }
}

/// CEL reserves these words: a field named so is `self.__word__` in a
/// rule, and `self.word` silently becomes an expensive dynamic lookup the
/// API server refuses (estimated cost over budget).
#[test]
fn cel_rules_escape_reserved_field_names() {
    const RESERVED: [&str; 16] = [
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    let mut found = Vec::new();
    for m in crd::manifests() {
        all_rules(root(&m.crd), &m.file_name, &mut found);
    }
    assert!(found.len() >= 15, "{found:?}");
    for (path, rule) in &found {
        for word in RESERVED {
            let field = format!(".{word}");
            let unescaped = rule.match_indices(&field).any(|(at, _)| {
                let next = rule[at + field.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            assert!(
                !unescaped,
                "{path}: {rule:?} reads .{word}: a CEL reserved word, write .__{word}__"
            );
        }
    }
}
