//! The node agent's discovery of flannel's VXLAN devices, against devices
//! made in a network namespace the way flanneld makes them (and some that
//! are not flannel's): VNI, UDP port, local address and underlay device all
//! read from the kernel. Needs root and iproute2's vxlan support.

use std::process::Command;

use weir_e2e::host;
use weir_e2e::netns::Netns;
use weir_ebpf::vxlan::VxlanParams;
use weir_operator::agent::vxlan_discovery::{self, FlannelVxlan, Underlay, UnderlaySource};

/// A test netns with the small interface the discovery test needs.
struct Ns(Netns);

impl Ns {
    fn new(tag: &str) -> Self {
        host::require_privileged_host();
        Self(Netns::create(&format!("weirop-{tag}-{}", std::process::id())).expect("netns"))
    }

    /// `ip -n <ns> <args>`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(self.0.name())
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.0.run(f).expect("enter netns")
    }

    fn ifindex(&self, ifname: &str) -> u32 {
        let name = ifname.to_owned();
        self.enter(move || nix::net::if_::if_nametoindex(name.as_str()))
            .unwrap_or_else(|e| panic!("no interface {ifname}: {e}"))
    }
}

#[test]
fn discovery_reads_port_vni_local_and_underlay_from_the_kernel() {
    let ns = Ns::new("vxdisc");
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ns.ip(&["link", "add", "ul2", "type", "veth", "peer", "name", "ul3"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    ns.ip(&["link", "set", "ul2", "up"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ul0"]);
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "ul2", "nodad"]);
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "ul2"]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.51.100.254",
        "dev",
        "ul2",
    ]);
    // flanneld's IPv4 device: everything given
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.0.2.1",
        "dev",
        "ul0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    // IPv6 device without `dev`: the underlay is the owner of the local address
    ns.ip(&[
        "link",
        "add",
        "flannel-v6.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "2001:db8::1",
        "dstport",
        "8472",
        "nolearning",
    ]);
    // another VNI and port, neither dev nor local: the default route's device
    ns.ip(&[
        "link",
        "add",
        "flannel.4096",
        "type",
        "vxlan",
        "id",
        "4096",
        "dstport",
        "4789",
    ]);
    // not flannel's: a VXLAN device with another name, a "flannel.9" that is no VXLAN
    ns.ip(&[
        "link", "add", "vx0", "type", "vxlan", "id", "9", "dstport", "4789", "dev", "ul0",
    ]);
    ns.ip(&["link", "add", "flannel.9", "type", "bridge"]);

    let found = ns.enter(vxlan_discovery::discover).expect("discover");
    let idx = |n: &str| ns.ifindex(n);
    let underlay = |name: &str, source| {
        Some(Underlay {
            ifindex: idx(name),
            name: name.into(),
            source,
        })
    };
    assert_eq!(
        found,
        [
            FlannelVxlan {
                name: "flannel-v6.1".into(),
                ifindex: idx("flannel-v6.1"),
                vni: 1,
                port: 8472,
                local: Some("2001:db8::1".parse().unwrap()),
                underlay: underlay("ul2", UnderlaySource::LocalAddress),
            },
            FlannelVxlan {
                name: "flannel.1".into(),
                ifindex: idx("flannel.1"),
                vni: 1,
                port: 8472,
                local: Some("192.0.2.1".parse().unwrap()),
                underlay: underlay("ul0", UnderlaySource::VxlanLink),
            },
            FlannelVxlan {
                name: "flannel.4096".into(),
                ifindex: idx("flannel.4096"),
                vni: 4096,
                port: 4789,
                local: None,
                underlay: underlay("ul2", UnderlaySource::DefaultRoute),
            },
        ]
    );
    assert!(found[0].is_ipv6() && !found[1].is_ipv6());
    assert_eq!(found[1].params(), VxlanParams { port: 8472 });

    // the async form, from inside a runtime, sees the same
    let again = ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
            .block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                // the blocking form works from inside a runtime too
                let blocking = vxlan_discovery::discover().unwrap();
                (
                    vxlan_discovery::discover_with(&handle).await.unwrap(),
                    blocking,
                )
            })
    });
    assert_eq!(again.0, found);
    assert_eq!(again.1, found);

    // no flannel device at all: an empty answer, not an error
    let empty = Ns::new("vxnone");
    assert!(empty.enter(vxlan_discovery::discover).unwrap().is_empty());
}
