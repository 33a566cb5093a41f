//! `prevResult`: the result of the plugins before weir in the chain.
//!
//! weir does not change what the pod looks like from the runtime's point of
//! view (same interface name, MAC, IPs, routes), so it prints `prevResult`
//! back as it came. The raw JSON is therefore the source of truth and the
//! typed view below is read-only: fields weir does not model (or that newer
//! plugins add) survive untouched.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use super::error::{CniError, Result};
use super::version::CniVersion;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// netns path for interfaces inside the pod; empty/absent on the host.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

impl Interface {
    /// Whether the interface lives in the pod (a non-empty `sandbox`).
    pub fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }

    /// `mac` as six bytes, when it is an Ethernet address.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let mac = self.mac.as_deref()?;
        let mut out = [0u8; 6];
        let mut parts = mac.split(':');
        for byte in &mut out {
            let part = parts.next()?;
            // from_str_radix alone would accept "+a".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn of(addr: IpAddr) -> IpFamily {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Host address with prefix, e.g. 10.244.1.5/24 (`.ip()` is the host).
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; `None` when the producer did not say.
    pub interface: Option<usize>,
    /// The pre-1.0 `version` field, when present.
    pub version: Option<IpFamily>,
}

impl IpConfig {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.address.ip())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrevResult {
    raw: Map<String, Value>,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl PrevResult {
    /// Validates `value` as a result of spec `version`.
    ///
    /// The pre-1.0 `ips[].version` is checked when present (it must agree
    /// with the address) but its absence is tolerated: weir only echoes it.
    pub fn parse(value: &Value, version: CniVersion) -> Result<PrevResult> {
        let raw = value
            .as_object()
            .ok_or_else(|| invalid("prevResult", "must be a JSON object"))?;

        let interfaces = array(raw, "interfaces", "prevResult")?
            .iter()
            .enumerate()
            .map(|(i, v)| parse_interface(v, &format!("prevResult.interfaces[{i}]")))
            .collect::<Result<Vec<_>>>()?;

        let ips = array(raw, "ips", "prevResult")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse_ip(
                    v,
                    &format!("prevResult.ips[{i}]"),
                    interfaces.len(),
                    version,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        let routes = array(raw, "routes", "prevResult")?
            .iter()
            .enumerate()
            .map(|(i, v)| parse_route(v, &format!("prevResult.routes[{i}]")))
            .collect::<Result<Vec<_>>>()?;

        let dns = match raw.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(v) => parse_dns(v)?,
        };

        Ok(PrevResult {
            raw: raw.clone(),
            interfaces,
            ips,
            routes,
            dns,
        })
    }

    /// The JSON as received.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The result to print: the input unchanged except `cniVersion`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = self.raw.clone();
        out.insert(
            "cniVersion".to_owned(),
            Value::String(version.as_str().to_owned()),
        );
        Value::Object(out)
    }

    /// The pod-side interface named `ifname` and its index.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && i.in_sandbox())
    }

    /// IPs of the pod interface `ifname`. An IP without an `interface` index
    /// counts as the pod's: IPAM-style results omit the index and those
    /// addresses are always configured in the pod.
    pub fn pod_ips(&self, ifname: &str) -> Vec<&IpConfig> {
        let idx = self.sandbox_interface(ifname).map(|(i, _)| i);
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == idx)
            .collect()
    }
}

fn invalid(path: &str, why: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("invalid {path}: {why}"))
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| invalid(path, "must be an object"))
}

/// An optional list; `null` reads as empty (Go producers emit it for nil slices).
fn array<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a [Value]> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(&format!("{path}.{key}"), "must be an array")),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(&format!("{path}.{key}"), "must be a string")),
    }
}

fn opt_u32(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    &format!("{path}.{key}"),
                    "must be an unsigned 32-bit integer",
                )
            }),
    }
}

fn str_list(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Vec<String>> {
    array(obj, key, path)?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid(&format!("{path}.{key}"), "must be a list of strings"))
        })
        .collect()
}

fn parse_interface(v: &Value, path: &str) -> Result<Interface> {
    let obj = object(v, path)?;
    let name = opt_str(obj, "name", path)?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(&format!("{path}.name"), "is required"))?;
    Ok(Interface {
        name: name.to_owned(),
        mac: opt_str(obj, "mac", path)?.map(str::to_owned),
        sandbox: opt_str(obj, "sandbox", path)?.map(str::to_owned),
        mtu: opt_u32(obj, "mtu", path)?,
    })
}

fn parse_ip(v: &Value, path: &str, n_interfaces: usize, version: CniVersion) -> Result<IpConfig> {
    let obj = object(v, path)?;
    let address_str = opt_str(obj, "address", path)?
        .ok_or_else(|| invalid(&format!("{path}.address"), "is required"))?;
    let address = parse_cidr(address_str, &format!("{path}.address"))?;
    let gateway = opt_str(obj, "gateway", path)?
        .map(|g| {
            g.parse::<IpAddr>()
                .map_err(|e| invalid(&format!("{path}.gateway"), format!("{g:?}: {e}")))
        })
        .transpose()?;
    let interface = match obj.get("interface") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let idx = v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        &format!("{path}.interface"),
                        "must be a non-negative integer",
                    )
                })?;
            if idx >= n_interfaces {
                return Err(invalid(
                    &format!("{path}.interface"),
                    format!("index {idx} out of range ({n_interfaces} interfaces)"),
                ));
            }
            Some(idx)
        }
    };
    let ip_version = if version.ips_carry_version() {
        match opt_str(obj, "version", path)? {
            None => None,
            Some(s) => {
                let fam = match s {
                    "4" => IpFamily::V4,
                    "6" => IpFamily::V6,
                    _ => {
                        return Err(invalid(
                            &format!("{path}.version"),
                            format!("{s:?} is not \"4\" or \"6\""),
                        ));
                    }
                };
                if fam != IpFamily::of(address.ip()) {
                    return Err(invalid(
                        &format!("{path}.version"),
                        format!("{s:?} does not match address {address_str}"),
                    ));
                }
                Some(fam)
            }
        }
    } else {
        // 1.x dropped the field; if a producer still sends it, it is only
        // echoed back.
        None
    };
    Ok(IpConfig {
        address,
        gateway,
        interface,
        version: ip_version,
    })
}

/// An address with its prefix length, as the spec requires (`10.0.0.2/24`);
/// the bare `10.0.0.2` that `IpNetwork` would take as a /32 is refused, as
/// libcni refuses it.
fn parse_cidr(text: &str, path: &str) -> Result<IpNetwork> {
    let Some((_, prefix)) = text.split_once('/') else {
        return Err(invalid(
            path,
            format!("{text:?} has no prefix length (expected address/prefix)"),
        ));
    };
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(path, format!("{text:?}: bad prefix length")));
    }
    text.parse()
        .map_err(|e| invalid(path, format!("{text:?}: {e}")))
}

fn parse_route(v: &Value, path: &str) -> Result<Route> {
    let obj = object(v, path)?;
    let dst_str =
        opt_str(obj, "dst", path)?.ok_or_else(|| invalid(&format!("{path}.dst"), "is required"))?;
    let dst = parse_cidr(dst_str, &format!("{path}.dst"))?;
    let gw = opt_str(obj, "gw", path)?
        .map(|g| {
            g.parse::<IpAddr>()
                .map_err(|e| invalid(&format!("{path}.gw"), format!("{g:?}: {e}")))
        })
        .transpose()?;
    Ok(Route {
        dst,
        gw,
        mtu: opt_u32(obj, "mtu", path)?,
        advmss: opt_u32(obj, "advmss", path)?,
        priority: opt_u32(obj, "priority", path)?,
        table: opt_u32(obj, "table", path)?,
        scope: opt_u32(obj, "scope", path)?,
    })
}

fn parse_dns(v: &Value) -> Result<Dns> {
    let path = "prevResult.dns";
    let obj = object(v, path)?;
    Ok(Dns {
        nameservers: str_list(obj, "nameservers", path)?,
        domain: opt_str(obj, "domain", path)?.map(str::to_owned),
        search: str_list(obj, "search", path)?,
        options: str_list(obj, "options", path)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cni::error::code;
    use serde_json::json;

    pub(crate) const SANDBOX: &str = "/var/run/netns/cni-5e2f6c1a-0b7d-4c1e-9f3a-2d8b7e6c5a41";

    /// What bridge + host-local print for a dual-stack flannel pod, in the
    /// shape of `version`: pre-1.0 `ips` carry `"version"`, 1.1.0 adds the
    /// interface MTU and route attributes newer plugins emit.
    pub(crate) fn bridge_result(version: CniVersion) -> Value {
        let mut v4 = json!({"interface": 2, "address": "10.244.1.5/24", "gateway": "10.244.1.1"});
        let mut v6 = json!({
            "interface": 2,
            "address": "fd00:10:244:1::5/64",
            "gateway": "fd00:10:244:1::1"
        });
        if version.ips_carry_version() {
            v4["version"] = json!("4");
            v6["version"] = json!("6");
        }
        let mut result = json!({
            "cniVersion": version.as_str(),
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
                {"name": "veth3c1a7d52", "mac": "b6:2f:91:0c:4e:7a"},
                {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": SANDBOX}
            ],
            "ips": [v4, v6],
            "routes": [
                {"dst": "10.244.0.0/16"},
                {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
                {"dst": "::/0", "gw": "fd00:10:244:1::1"}
            ],
            "dns": {}
        });
        if version == CniVersion::V1_1_0 {
            for iface in result["interfaces"].as_array_mut().unwrap() {
                iface["mtu"] = json!(1450);
            }
            result["routes"][0]["mtu"] = json!(1450);
            result["routes"][0]["scope"] = json!(0);
            result["routes"][1]["priority"] = json!(100);
            result["routes"][1]["table"] = json!(254);
            result["dns"] = json!({
                "nameservers": ["10.96.0.10"],
                "domain": "cluster.local",
                "search": ["shop.svc.cluster.local", "svc.cluster.local"],
                "options": ["ndots:5"]
            });
        }
        result
    }

    #[test]
    fn each_version_parses_and_prints_back_unchanged() {
        for version in CniVersion::ALL {
            let input = bridge_result(version);
            let prev = PrevResult::parse(&input, version).unwrap();

            assert_eq!(prev.interfaces.len(), 3, "{version}");
            let (idx, eth0) = prev.sandbox_interface("eth0").unwrap();
            assert_eq!(idx, 2);
            assert_eq!(eth0.mac.as_deref(), Some("0a:58:0a:f4:01:05"));
            assert_eq!(eth0.mac_bytes(), Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]));
            assert_eq!(eth0.sandbox.as_deref(), Some(SANDBOX));

            let ips = prev.pod_ips("eth0");
            assert_eq!(ips.len(), 2);
            assert_eq!(ips[0].address.to_string(), "10.244.1.5/24");
            assert_eq!(ips[0].address.ip().to_string(), "10.244.1.5");
            assert_eq!(ips[0].gateway, Some("10.244.1.1".parse().unwrap()));
            assert_eq!(ips[0].family(), IpFamily::V4);
            assert_eq!(ips[1].address.to_string(), "fd00:10:244:1::5/64");
            assert_eq!(ips[1].family(), IpFamily::V6);
            let want_version = version.ips_carry_version().then_some(IpFamily::V4);
            assert_eq!(ips[0].version, want_version, "{version}");

            assert_eq!(prev.routes.len(), 3);
            assert_eq!(prev.routes[0].dst.to_string(), "10.244.0.0/16");
            assert_eq!(prev.routes[0].gw, None);
            assert_eq!(prev.routes[2].gw, Some("fd00:10:244:1::1".parse().unwrap()));

            // Printed for the same version: identical to the input.
            assert_eq!(prev.to_json(version), input, "{version}");
            // Printed for another request version: only cniVersion differs.
            let mut expected = input.clone();
            expected["cniVersion"] = json!("9.9.9");
            let mut out = prev.to_json(CniVersion::LATEST);
            assert_eq!(out["cniVersion"], CniVersion::LATEST.as_str());
            out["cniVersion"] = json!("9.9.9");
            assert_eq!(out, expected, "{version}");
        }
    }

    #[test]
    fn v1_1_extras_are_modelled() {
        let prev =
            PrevResult::parse(&bridge_result(CniVersion::V1_1_0), CniVersion::V1_1_0).unwrap();
        assert_eq!(prev.interfaces[2].mtu, Some(1450));
        assert_eq!(prev.routes[0].mtu, Some(1450));
        assert_eq!(prev.routes[0].scope, Some(0));
        assert_eq!(prev.routes[1].priority, Some(100));
        assert_eq!(prev.routes[1].table, Some(254));
        assert_eq!(prev.dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(prev.dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(prev.dns.search.len(), 2);
        assert_eq!(prev.dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn unknown_fields_survive_everywhere() {
        let mut input = bridge_result(CniVersion::V1_0_0);
        input["x-vendor"] = json!({"nested": [1, 2.5, null, true], "s": "keep"});
        input["interfaces"][2]["socketPath"] = json!("/run/vhost/sock0");
        input["interfaces"][2]["pciID"] = json!("0000:00:1f.6");
        input["ips"][0]["x-extra"] = json!(42);
        input["routes"][1]["x-route-note"] = json!("via flannel");
        input["dns"]["x-dns"] = json!(["a"]);
        let prev = PrevResult::parse(&input, CniVersion::V1_0_0).unwrap();
        assert_eq!(prev.to_json(CniVersion::V1_0_0), input);
        assert_eq!(prev.raw()["x-vendor"]["s"], "keep");
    }

    #[test]
    fn missing_cni_version_in_prev_result_is_added_on_output() {
        let mut input = bridge_result(CniVersion::V0_4_0);
        input.as_object_mut().unwrap().remove("cniVersion");
        let prev = PrevResult::parse(&input, CniVersion::V0_4_0).unwrap();
        assert_eq!(prev.to_json(CniVersion::V0_4_0)["cniVersion"], "0.4.0");
    }

    #[test]
    fn ip_without_interface_index_belongs_to_the_pod() {
        let input = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0"},
                {"name": "eth0", "sandbox": SANDBOX},
                {"name": "net1", "sandbox": SANDBOX}
            ],
            "ips": [
                {"address": "10.244.1.5/24", "interface": 1},
                {"address": "192.168.7.2/24", "interface": 2},
                {"address": "10.0.0.9/32"},
                {"address": "10.244.1.1/24", "interface": 0}
            ]
        });
        let prev = PrevResult::parse(&input, CniVersion::V1_0_0).unwrap();
        let addrs = |ifname| {
            prev.pod_ips(ifname)
                .iter()
                .map(|ip| ip.address.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs("eth0"), vec!["10.244.1.5/24", "10.0.0.9/32"]);
        assert_eq!(addrs("net1"), vec!["192.168.7.2/24", "10.0.0.9/32"]);
        // A host interface is never the pod's, even with a matching name.
        assert_eq!(prev.sandbox_interface("cni0"), None);
        assert_eq!(addrs("eth9"), vec!["10.0.0.9/32"]);
    }

    #[test]
    fn empty_sandbox_is_host_side() {
        let input = json!({
            "interfaces": [{"name": "eth0", "sandbox": ""}, {"name": "eth0", "sandbox": SANDBOX}],
            "ips": []
        });
        let prev = PrevResult::parse(&input, CniVersion::V1_0_0).unwrap();
        assert_eq!(prev.sandbox_interface("eth0").map(|(i, _)| i), Some(1));
    }

    #[test]
    fn minimal_and_null_lists() {
        let prev = PrevResult::parse(&json!({"cniVersion": "1.0.0"}), CniVersion::V1_0_0).unwrap();
        assert!(prev.interfaces.is_empty() && prev.ips.is_empty() && prev.routes.is_empty());
        let prev = PrevResult::parse(
            &json!({"interfaces": null, "ips": null, "routes": null, "dns": null}),
            CniVersion::V1_0_0,
        )
        .unwrap();
        assert_eq!(prev.dns, Dns::default());
    }

    #[test]
    fn pre_1_0_ips_may_omit_version() {
        let input = json!({"ips": [{"address": "10.1.0.2/16"}]});
        let prev = PrevResult::parse(&input, CniVersion::V0_3_1).unwrap();
        assert_eq!(prev.ips[0].version, None);
    }

    #[test]
    fn v1_ignores_stray_version_field_but_keeps_it() {
        let input = json!({"ips": [{"version": "6", "address": "10.1.0.2/16"}]});
        let prev = PrevResult::parse(&input, CniVersion::V1_0_0).unwrap();
        assert_eq!(prev.ips[0].version, None);
        assert_eq!(prev.to_json(CniVersion::V1_0_0)["ips"][0]["version"], "6");
    }

    #[test]
    fn invalid_results_are_code_7() {
        let cases = [
            (json!([]), CniVersion::V1_0_0, "prevResult"),
            (
                json!({"interfaces": {}}),
                CniVersion::V1_0_0,
                "prevResult.interfaces",
            ),
            (
                json!({"interfaces": [{"mac": "aa"}]}),
                CniVersion::V1_0_0,
                "prevResult.interfaces[0].name",
            ),
            (
                json!({"interfaces": [{"name": "eth0", "mtu": -1}]}),
                CniVersion::V1_0_0,
                "mtu",
            ),
            (
                json!({"ips": [{"address": "10.0.0.2"}]}),
                CniVersion::V1_0_0,
                "no prefix length",
            ),
            (
                json!({"ips": [{"address": "1.2.3.4/"}]}),
                CniVersion::V1_0_0,
                "prevResult.ips[0].address",
            ),
            (
                json!({"ips": [{"address": "fd00::5"}]}),
                CniVersion::V0_4_0,
                "no prefix length",
            ),
            (
                json!({"routes": [{"dst": "0.0.0.0"}]}),
                CniVersion::V1_0_0,
                "prevResult.routes[0].dst",
            ),
            (
                json!({"ips": [{"gateway": "10.0.0.1"}]}),
                CniVersion::V1_0_0,
                "prevResult.ips[0].address",
            ),
            (
                json!({"ips": [{"address": "10.0.0.300/24"}]}),
                CniVersion::V1_0_0,
                "address",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/24", "gateway": "nope"}]}),
                CniVersion::V1_0_0,
                "gateway",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/24", "interface": 0}]}),
                CniVersion::V1_0_0,
                "out of range",
            ),
            (
                json!({"interfaces": [{"name": "a"}], "ips": [{"address": "10.0.0.3/24", "interface": -1}]}),
                CniVersion::V1_0_0,
                "interface",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/24", "version": "6"}]}),
                CniVersion::V0_4_0,
                "does not match",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/24", "version": "5"}]}),
                CniVersion::V0_3_0,
                "version",
            ),
            (
                json!({"ips": [{"address": "10.0.0.3/24", "version": 4}]}),
                CniVersion::V0_3_1,
                "version",
            ),
            (
                json!({"routes": [{"gw": "10.0.0.1"}]}),
                CniVersion::V1_0_0,
                "prevResult.routes[0].dst",
            ),
            (
                json!({"routes": [{"dst": "default"}]}),
                CniVersion::V1_0_0,
                "dst",
            ),
            (
                json!({"routes": [{"dst": "0.0.0.0/0", "table": "main"}]}),
                CniVersion::V1_1_0,
                "table",
            ),
            (json!({"dns": []}), CniVersion::V1_0_0, "dns"),
            (
                json!({"dns": {"nameservers": [1]}}),
                CniVersion::V1_0_0,
                "nameservers",
            ),
        ];
        for (input, version, needle) in cases {
            let err = PrevResult::parse(&input, version).unwrap_err();
            assert_eq!(err.code(), code::INVALID_CONFIG, "{input}");
            assert!(
                err.msg().contains(needle),
                "{input}: {err} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn mac_bytes_rejects_non_ethernet() {
        let with = |mac: &str| Interface {
            name: "eth0".into(),
            mac: Some(mac.into()),
            sandbox: None,
            mtu: None,
        };
        assert_eq!(
            with("AA:bb:cc:dd:ee:ff").mac_bytes(),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert_eq!(with("aa:bb:cc:dd:ee").mac_bytes(), None);
        assert_eq!(with("aa:bb:cc:dd:ee:ff:00").mac_bytes(), None);
        assert_eq!(with("a:bb:cc:dd:ee:ff").mac_bytes(), None);
        assert_eq!(with("+a:bb:cc:dd:ee:ff").mac_bytes(), None);
        assert_eq!(with("").mac_bytes(), None);
    }
}
