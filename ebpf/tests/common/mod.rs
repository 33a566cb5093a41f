//! Shared by the integration tests: privilege checks that fail loudly, a
//! throw-away bpf root, BPF_PROG_TEST_RUN, packet builders and netns helpers.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    ffi::CString,
    fs,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use weir_ebpf::{BPF_FS_MAGIC, BpfRoot};

mod frames;
mod prog_run;
#[allow(unused_imports)] // each test binary uses a different part
pub use {frames::*, prog_run::*};

pub const TC_ACT_REDIRECT: u32 = 7;

/// CLOCK_BOOTTIME now, in ns: the clock of the flow maps' timestamps.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// These tests load eBPF and make network namespaces: without root and bpffs
/// they cannot say anything, and passing silently would hide that.
pub fn require_privileges() {
    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "weir-ebpf integration tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns); running as uid {euid}"
    );
    let c = CString::new("/sys/fs/bpf").unwrap();
    // SAFETY: statfs is plain data filled by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    assert!(
        rc == 0 && magic == BPF_FS_MAGIC,
        "bpffs is not mounted at /sys/fs/bpf (statfs rc {rc}, magic {magic:#x}); run `mount -t bpf bpf /sys/fs/bpf`"
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A bpf root of its own under /sys/fs/bpf, removed with everything pinned
/// in it when dropped, so tests never share maps or see each other's stats.
pub struct TestRoot {
    pub root: BpfRoot,
}

impl TestRoot {
    pub fn new(tag: &str) -> Self {
        require_privileges();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/weir-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        Self {
            root: BpfRoot::new(path),
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.root.path());
    }
}

pub fn prog_fd(p: &aya::programs::SchedClassifier) -> BorrowedFd<'_> {
    p.fd().expect("program loaded").as_fd()
}

/// Drains the ring buffer pinned at `pin`, each record a `T` of exactly
/// `size_of::<T>()` bytes (an ABI event struct written by a program).
pub fn ring_events<T: Copy>(pin: &Path) -> Vec<T> {
    use aya::maps::{Map, MapData, RingBuf};
    let data = MapData::from_pin(pin).unwrap();
    let mut rb = RingBuf::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert_eq!(item.len(), std::mem::size_of::<T>());
        // SAFETY: a plain-data ABI record of exactly this size (checked above).
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    out
}

pub fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

pub fn v6(a: [u8; 16]) -> IpAddr {
    IpAddr::from(a)
}

// ---- network namespaces ----

/// Runs `cmd` and fails the test unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) {
    checked(cmd, args);
}

/// Runs `cmd`, fails the test unless it succeeds, and returns its stdout.
pub fn output(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&checked(cmd, args).stdout).into_owned()
}

fn checked(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Pins a map named `name` of another shape where the loaders expect their
/// own (as an older build with another layout would leave it).
pub fn pin_foreign_map(root: &BpfRoot, name: &str, ty: &str, key: u32, value: u32) {
    fs::create_dir_all(root.maps_dir()).unwrap();
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(root.map_path(name))
        .args([
            "type",
            ty,
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
        ])
        .args(["entries", "1024", "name", name])
        .status()
        .expect("bpftool (install it with scripts/bootstrap.sh)");
    assert!(status.success());
}

/// A named netns (`ip netns add`), deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_privileges();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("weirt-{}-{tag}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        Self { name }
    }

    /// `ip -n <ns> <args>`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `f` on a fresh thread that has entered this netns, as the CNI
    /// plugin does (setns is per thread).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: valid netns fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    pub fn ifindex(&self, ifname: &str) -> u32 {
        let name = ifname.to_owned();
        self.enter(move || {
            let c = CString::new(name.as_str()).unwrap();
            // SAFETY: valid C string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert!(
                i != 0,
                "no interface {name}: {}",
                std::io::Error::last_os_error()
            );
            i
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

// ---- a pod behind a split, as the CNI plugin leaves it ----

pub const HOST_IP: &str = "192.0.2.1";
pub const POD_IP: &str = "192.0.2.2";
pub const POD_PORT: u16 = 7777;

/// Two namespaces: "host" with `hveth`, whose veth peer `wx-eth0` sits in
/// "pod" next to the new pair `eth0` <-> `wi-eth0`. Without a split nothing
/// connects `wx-eth0` to `eth0`, so any traffic between host and pod proves
/// the programs forward it.
pub struct Topology {
    pub host: Netns,
    pub pod: Netns,
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        let host = Netns::new(&format!("{tag}h"));
        let pod = Netns::new(&format!("{tag}p"));
        pod.ip(&[
            "link", "add", "wx-eth0", "type", "veth", "peer", "name", "hveth", "netns", &host.name,
        ]);
        pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "wi-eth0",
        ]);
        for dev in ["lo", "wx-eth0", "wi-eth0", "eth0"] {
            pod.ip(&["link", "set", dev, "up"]);
        }
        pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
        host.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "hveth"]);
        host.ip(&["link", "set", "hveth", "up"]);
        host.ip(&["link", "set", "lo", "up"]);
        Self { host, pod }
    }

    /// Adds a second pod interface `<ifname>` split the same way (a pod with
    /// several networks), its outer side peered to `h<ifname>` on the host.
    pub fn add_interface(&self, ifname: &str) {
        let wx = format!("wx-{ifname}");
        let wi = format!("wi-{ifname}");
        let h = format!("h{ifname}");
        self.pod.ip(&[
            "link",
            "add",
            &wx,
            "type",
            "veth",
            "peer",
            "name",
            &h,
            "netns",
            &self.host.name,
        ]);
        self.pod
            .ip(&["link", "add", ifname, "type", "veth", "peer", "name", &wi]);
        for dev in [wx.as_str(), wi.as_str(), ifname] {
            self.pod.ip(&["link", "set", dev, "up"]);
        }
        self.host.ip(&["link", "set", &h, "up"]);
    }

    pub fn params(&self, pod_id: u32, ifname: &str) -> weir_ebpf::SplitParams {
        weir_ebpf::SplitParams {
            pod_id,
            wx_ifindex: self.pod.ifindex(&format!("wx-{ifname}")),
            wi_ifindex: self.pod.ifindex(&format!("wi-{ifname}")),
            // wx-<if>'s peer is in the host netns
            outbound_via_peer: true,
        }
    }

    /// Sends `n` datagrams of `len` bytes host -> pod and answers each with
    /// `reply_len` bytes pod -> host. Returns how many round trips completed.
    pub fn udp_exchange(&self, n: usize, len: usize, reply_len: usize) -> usize {
        use std::{net::UdpSocket, time::Duration};
        let pod_sock = self
            .pod
            .enter(|| UdpSocket::bind((POD_IP, POD_PORT)).expect("bind in pod"));
        let host_sock = self
            .host
            .enter(|| UdpSocket::bind((HOST_IP, 0)).expect("bind in host"));
        let timeout = Some(Duration::from_millis(700));
        pod_sock.set_read_timeout(timeout).unwrap();
        host_sock.set_read_timeout(timeout).unwrap();
        let mut done = 0;
        let mut buf = vec![0u8; 65536];
        for _ in 0..n {
            host_sock
                .send_to(&vec![0x42; len], (POD_IP, POD_PORT))
                .unwrap();
            let Ok((got, from)) = pod_sock.recv_from(&mut buf) else {
                continue;
            };
            assert_eq!(got, len);
            pod_sock.send_to(&vec![0x24; reply_len], from).unwrap();
            if let Ok((got, _)) = host_sock.recv_from(&mut buf) {
                assert_eq!(got, reply_len);
                done += 1;
            }
        }
        if done < n {
            // a failed exchange leaves datagrams queued behind unresolved
            // neighbours; they would leak into the next exchange's counts
            self.host.ip(&["neigh", "flush", "all"]);
            self.pod.ip(&["neigh", "flush", "all"]);
        }
        done
    }
}

/// Names of the programs attached with TCX to `ifname` ingress in `ns`.
pub fn tcx_programs(ns: &Netns, ifname: &str) -> Vec<String> {
    let ifname = ifname.to_owned();
    ns.enter(move || {
        let (_, progs) = aya::programs::SchedClassifier::query_tcx(
            &ifname,
            aya::programs::TcAttachType::Ingress,
        )
        .expect("query tcx");
        progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    })
}

/// `tc filter show dev <ifname> ingress` in `ns`.
pub fn tc_filters(ns: &Netns, ifname: &str) -> String {
    output(
        "tc",
        &["-n", &ns.name, "filter", "show", "dev", ifname, "ingress"],
    )
}

/// Polls `cond` for up to two seconds: releasing a link through its last
/// pin is done by a kernel work item, not synchronously.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..40 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("not within 2s: {what}");
}
