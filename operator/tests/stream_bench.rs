//! The live stream's cost: 10 clients streaming 10,000 active flows that
//! all grow every collection, through the agent's real HTTP endpoint (no
//! authorisation: its cost is one review per client per 30 s). Prints the
//! CPU time and the resident memory the stream adds per collection and the
//! time from publishing to the last line at the slowest client; checks that
//! every client got every line and nothing was lost. BENCHMARKS.md quotes
//! it: `cargo test --release -p weir-operator --test stream_bench -- --nocapture`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use weir_operator::agent::join::{FlowDirection, PodFlowView};
use weir_operator::agent::server::{self, Endpoints};
use weir_operator::agent::stream::Hub;
use weir_operator::agent::table::FlowTable;

const FLOWS: usize = 10_000;
const CLIENTS: usize = 10;
const COLLECTIONS: u64 = 5;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: initialised by the call above.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

fn views(round: u64) -> Vec<PodFlowView> {
    (0..FLOWS)
        .map(|i| PodFlowView {
            pod_id: (i % 100) as u32,
            namespace: Some(format!("ns-{}", i % 10)),
            pod: format!("pod-{}", i % 100),
            direction: FlowDirection::Egress,
            protocol: 6,
            source: IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8]),
            source_port: 40000,
            destination: "10.96.0.10".parse().unwrap(),
            destination_port: 80,
            packets: 10 * (round + 1),
            bytes: 10_000 * (round + 1),
            first_seen_ns: 1,
            last_seen_ns: 2,
            tcp_flags: 0x18,
            peer: None,
            overlay: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_stream_ten_thousand_flows() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = Arc::new(Hub::new("node-1"));
    let endpoints = Arc::new(Endpoints {
        registry: Default::default(),
        flows: Arc::new(Mutex::new(FlowTable::new("node-1"))),
        authz: None,
        stream: hub.clone(),
        node: "node-1".into(),
    });
    tokio::spawn(server::serve(
        listener,
        endpoints,
        weir_operator::http::Readiness::waiting("a test"),
    ));
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::channel::<(usize, u64, u64, Instant)>(CLIENTS * 8);
    for c in 0..CLIENTS {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /flows/stream HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let (mut lines, mut lost) = (0u64, 0u64);
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    return;
                }
                if line.contains("\"endOfCollection\"") {
                    let _ = done_tx.send((c, lines, lost, Instant::now())).await;
                    lines = 0;
                } else if line.contains("\"lostUpdates\"") {
                    lost += 1;
                } else if line.starts_with('{') && line.contains("\"delta\"") {
                    lines += 1;
                }
            }
        });
    }
    weir_e2e::wait::eventually(Duration::from_secs(10), "all clients subscribe", || {
        let n = hub.subscribers();
        async move { anyhow::Ok((n == CLIENTS).then_some(())) }
    })
    .await
    .unwrap();
    let batches: Vec<Vec<PodFlowView>> = (0..COLLECTIONS).map(views).collect();
    let (cpu0, rss0) = (cpu_seconds(), rss_kib());
    let mut worst = Duration::ZERO;
    let mut publish_total = Duration::ZERO;
    let mut peak_rss = rss0;
    for batch in &batches {
        let started = Instant::now();
        hub.publish(batch);
        publish_total += started.elapsed();
        for _ in 0..CLIENTS {
            let (c, lines, lost, at) =
                tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
                    .await
                    .expect("every client ends the collection within 60 s")
                    .unwrap();
            assert_eq!((lines, lost), (FLOWS as u64, 0), "client {c}");
            worst = worst.max(at - started);
        }
        peak_rss = peak_rss.max(rss_kib());
    }
    let cpu = cpu_seconds() - cpu0;
    eprintln!(
        "{CLIENTS} clients x {FLOWS} flows, {COLLECTIONS} collections: process CPU {:.3} s per collection (publish {:.1} ms of it), \
         slowest client's last line {:.1} ms after publish, RSS {} MiB before, peak {} MiB",
        cpu / COLLECTIONS as f64,
        publish_total.as_secs_f64() * 1000.0 / COLLECTIONS as f64,
        worst.as_secs_f64() * 1000.0,
        rss0 / 1024,
        peak_rss / 1024
    );
}
