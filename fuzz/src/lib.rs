//! One fuzz input is what a runtime gives the plugin: `KEY=VALUE` lines of
//! `CNI_*` environment, an empty line, then stdin (the network config, with
//! `prevResult`). [`run_one`] parses it exactly as the plugin's `main` does
//! and checks what must hold for any input: no panic, errors carry a known
//! code and print as the spec's JSON, an accepted request only yields
//! values that are safe to act on (paths of one component, attachment ids
//! bpffs accepts and that never collide, a result that parses back).
//!
//! `make fuzz` runs it under AFL++ (`src/bin/weir-fuzz-afl.rs`); `make test`
//! runs every file of `corpus/` and `regressions/` once (`tests/corpus.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use weir_cni::cni::{self, CniArgs, CniVersion, Request, code, output};
use weir_cni::split::{Names, Step};
use weir_node_state::StateStore;

const KNOWN_CODES: [u32; 15] = [
    code::INCOMPATIBLE_VERSION,
    code::UNSUPPORTED_FIELD,
    code::UNKNOWN_CONTAINER,
    code::INVALID_ENV,
    code::IO_FAILURE,
    code::DECODE_FAILED,
    code::INVALID_CONFIG,
    code::TRY_AGAIN_LATER,
    code::PLUGIN_NOT_AVAILABLE,
    code::LIMITED_CONNECTIVITY,
    code::SPLIT_FAILED,
    code::EBPF_ATTACH_FAILED,
    code::STATE_FAILED,
    code::NETNS_FAILED,
    code::ROLLBACK_FAILED,
];

/// Splits an input into its environment and its stdin.
pub fn split_input(data: &[u8]) -> (BTreeMap<String, String>, &[u8]) {
    let (env_part, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &data[data.len()..]),
    };
    let env = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    (env, stdin)
}

pub fn run_one(data: &[u8]) {
    let (env, stdin) = split_input(data);
    if let Some(args) = env.get("CNI_ARGS") {
        // parsed on its own too, whatever the command
        if let Ok(parsed) = CniArgs::parse(args) {
            let _ = parsed.pod();
        }
    }
    match Request::parse(|k| env.get(k).cloned(), stdin) {
        Err(err) => check_error(&err, stdin),
        Ok(req) => check_request(&req),
    }
}

fn check_error(err: &cni::CniError, stdin: &[u8]) {
    assert!(KNOWN_CODES.contains(&err.code()), "unknown code {err:?}");
    assert!(!err.msg().is_empty(), "an error without a message: {err:?}");
    let printed = output::error(err, CniVersion::sniff(stdin));
    let v: Value = serde_json::from_str(&printed).expect("an error prints as JSON");
    assert_eq!(v["code"], err.code());
    assert!(v["cniVersion"].is_string() && v["details"].is_string());
}

fn check_request(req: &Request) {
    if let Some(conf) = &req.config {
        cni::config::validate_network_name(&conf.name).expect("an accepted name is valid");
        let store = StateStore::new(Path::new("/state"), &conf.name);
        let dir = store.network_dir();
        assert_eq!(dir.parent(), Some(Path::new("/state/networks")), "{dir:?}");
        let last = dir.file_name().expect("one component").to_string_lossy();
        assert!(
            last != "." && last != ".." && !last.contains('/'),
            "{dir:?}"
        );
        for p in [&conf.state_dir, &conf.bpf_root] {
            assert!(p.is_absolute(), "{p:?}");
        }
        if let Some(f) = &conf.fault_injection {
            // steps are parsed when the config is read: they print back
            for s in [f.fail_at, f.pause_at].into_iter().flatten() {
                assert_eq!(s.name().parse::<Step>(), Ok(s));
            }
        }
        if let Some(prev) = &conf.prev_result {
            let printed = output::add_result(prev, req.version);
            let v: Value = serde_json::from_str(&printed).expect("the result prints as JSON");
            assert_eq!(v["cniVersion"], req.version.as_str());
            let again = cni::PrevResult::parse(&v, req.version).expect("the echo parses back");
            assert_eq!(again.ips, prev.ips);
            assert_eq!(again.interfaces, prev.interfaces);
            assert_eq!(again.routes, prev.routes);
            for ip in v["ips"].as_array().into_iter().flatten() {
                let a = ip["address"].as_str().unwrap_or("");
                assert!(a.contains('/'), "an address without prefix accepted: {a:?}");
            }
            if let Ok(ifname) = req.env.ifname() {
                let _ = prev.sandbox_interface(ifname);
                let _ = prev.pod_ips(ifname);
            }
        }
    }
    let _ = req.env.args.pod();
    if let (Ok(cid), Ok(ifname)) = (req.env.container_id(), req.env.ifname()) {
        cni::env::validate_container_id(cid).expect("an accepted id is valid");
        assert!(ifname.len() <= cni::env::IFNAME_MAX_LEN);
        let id = weir_ebpf::attachment_id(cid, ifname);
        let root = weir_ebpf::BpfRoot::new("/sys/fs/bpf/weir");
        assert!(root.links_dir(&id).is_ok(), "attachment id {id:?} refused");
        // Ids that a lossy scheme would merge stay apart.
        for other in [
            cid.replace('.', "_"),
            cid.replace('_', "."),
            format!("{cid}-"),
        ] {
            if other != cid {
                assert_ne!(
                    weir_ebpf::attachment_id(&other, ifname),
                    id,
                    "{cid} vs {other}"
                );
            }
        }
        if let Some(names) = Names::for_ifname(ifname) {
            for n in [&names.outer, &names.inner, &names.temp, &names.pod] {
                assert!(n.len() <= cni::env::IFNAME_MAX_LEN, "{n}");
            }
        }
        let _ = weir_node_state::record_name(cid, ifname);
    }
}
