//! Traffic with known shape, so what weir counts can be checked exactly.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Ethernet + IPv4 + UDP header bytes in front of each datagram's payload.
pub const UDP4_OVERHEAD: u64 = 14 + 20 + 8;
pub const UDP6_OVERHEAD: u64 = 14 + 40 + 8;

/// `client` sends `count` datagrams of `size` bytes to `server_ip:port` and
/// `server` echoes each one; lock-step, so nothing is lost on the way and the
/// exact number of packets each way is `count`.
pub fn udp_echo(
    client: &Netns,
    server: &Netns,
    server_ip: IpAddr,
    port: u16,
    count: usize,
    size: usize,
) -> Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let echo = server.spawn(move || -> Result<()> {
        let sock = UdpSocket::bind(SocketAddr::new(unspecified(server_ip), port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        ready_tx.send(()).ok();
        let mut buf = vec![0u8; 65536];
        for _ in 0..count {
            let (n, from) = sock.recv_from(&mut buf).context("echo server receive")?;
            sock.send_to(&buf[..n], from)?;
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("echo server did not start")?;
    client.run(move || -> Result<()> {
        let sock = UdpSocket::bind(SocketAddr::new(unspecified(server_ip), 0))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.connect(SocketAddr::new(server_ip, port))?;
        let payload = vec![0x5au8; size];
        let mut buf = vec![0u8; 65536];
        for i in 0..count {
            sock.send(&payload)?;
            let n = sock
                .recv(&mut buf)
                .with_context(|| format!("echo {i} of {count} never came back"))?;
            if n != size {
                bail!("echo {i} came back with {n} bytes, sent {size}");
            }
        }
        Ok(())
    })??;
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))???;
    Ok(())
}

/// What the client's own socket says about a finished transfer.
#[derive(Debug, Clone, Copy)]
pub struct TcpReport {
    /// Payload bytes put on the wire, retransmissions included.
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
}

/// `client` sends `bytes` over one TCP connection to `server_ip:port`;
/// returns once both sides have closed and the server read every byte.
pub fn tcp_send(
    client: &Netns,
    server: &Netns,
    server_ip: IpAddr,
    port: u16,
    bytes: usize,
) -> Result<TcpReport> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = server.spawn(move || -> Result<usize> {
        let listener = TcpListener::bind(SocketAddr::new(unspecified(server_ip), port))?;
        ready_tx.send(()).ok();
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("TCP server did not start")?;
    let report = client.run(move || -> Result<TcpReport> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::new(server_ip, port), Duration::from_secs(5))?;
        let chunk = vec![0xa5u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            conn.write_all(&chunk[..n])?;
            left -= n;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        // Wait for the server's FIN so the whole exchange is on the wire.
        let mut rest = [0u8; 16];
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        while conn.read(&mut rest)? > 0 {}
        tcp_info(&conn)
    })??;
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("TCP server panicked"))???;
    if received != bytes {
        bail!("TCP server received {received} bytes, {bytes} were sent");
    }
    // The last ACK of the close handshake may still be in flight.
    std::thread::sleep(Duration::from_millis(200));
    Ok(report)
}

/// What the kernel says a connection's socket put on the wire.
pub fn tcp_info(conn: &TcpStream) -> Result<TcpReport> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and `info`/`len` describe a writable buffer
    // of exactly `len` bytes that outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_INFO: {}", std::io::Error::last_os_error());
    }
    Ok(TcpReport {
        bytes_sent: info.tcpi_bytes_sent,
        bytes_retrans: info.tcpi_bytes_retrans,
    })
}

/// The kernel's own TCP segment counters of a namespace (per-namespace
/// /proc/thread-self/net/snmp): an independent truth for segment counts,
/// since TCP counts segments, not GSO super-packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegments {
    pub out_segs: u64,
    pub in_segs: u64,
    pub retrans_segs: u64,
}

pub fn tcp_segments(ns: &Netns) -> Result<TcpSegments> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Tcp lines in snmp");
    };
    let field = |want: &str| -> Result<u64> {
        let idx = names
            .split_whitespace()
            .position(|n| n == want)
            .context(want.to_string())?;
        Ok(values
            .split_whitespace()
            .nth(idx)
            .context(want.to_string())?
            .parse()?)
    };
    Ok(TcpSegments {
        out_segs: field("OutSegs")?,
        in_segs: field("InSegs")?,
        retrans_segs: field("RetransSegs")?,
    })
}

/// Packets the device transmitted as the kernel counts them: one per skb,
/// so a GSO super-packet counts once — the contrast to wire segments.
pub fn tx_skbs(ns: &Netns, ifname: &str) -> Result<u64> {
    let json: serde_json::Value =
        serde_json::from_str(&ns.exec(&["ip", "-j", "-s", "link", "show", ifname])?)?;
    json[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .context("no tx packet stats")
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
