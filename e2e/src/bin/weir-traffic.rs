//! Traffic of a known shape from inside a pod (the cluster test image's tool):
//! what it sent is printed as JSON, so a test can check weir's counts exactly.
//!
//! ```text
//! weir-traffic udp-echo PORT [COUNT]        echo datagrams (COUNT, or forever)
//! weir-traffic udp-send IP:PORT COUNT SIZE  lock-step: each datagram waits for its echo
//! weir-traffic tcp-sink PORT                read connections to their end, forever
//! weir-traffic tcp-send IP:PORT BYTES       one connection, BYTES of payload, then close
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["udp-echo", port] => udp_echo(port, None),
        ["udp-echo", port, count] => udp_echo(port, Some(count)),
        ["udp-send", to, count, size] => udp_send(to, count, size),
        ["tcp-sink", port] => tcp_sink(port),
        ["tcp-send", to, bytes] => tcp_send(to, bytes),
        _ => Err(format!(
            "usage: weir-traffic udp-echo PORT [COUNT] | udp-send IP:PORT COUNT SIZE | tcp-sink PORT | tcp-send IP:PORT BYTES (got {args:?})"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-traffic: {e}");
            ExitCode::FAILURE
        }
    }
}

fn number<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, got {text:?}"))
}

fn address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("expected IP:PORT, got {text:?}"))
}

fn udp_echo(port: &str, count: Option<&str>) -> Result<(), String> {
    let port: u16 = number("PORT", port)?;
    let count: Option<u64> = count.map(|c| number("COUNT", c)).transpose()?;
    let sock = UdpSocket::bind(("::", port))
        .or_else(|_| UdpSocket::bind(("0.0.0.0", port)))
        .map_err(|e| format!("bind udp {port}: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let mut echoed = 0u64;
    while count.is_none_or(|c| echoed < c) {
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("receive: {e}"))?;
        sock.send_to(&buf[..n], from)
            .map_err(|e| format!("echo to {from}: {e}"))?;
        echoed += 1;
    }
    println!("{{\"echoed\":{echoed}}}");
    Ok(())
}

fn udp_send(to: &str, count: &str, size: &str) -> Result<(), String> {
    let to = address(to)?;
    let count: u64 = number("COUNT", count)?;
    let size: usize = number("SIZE", size)?;
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
    sock.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let payload = vec![0x5au8; size];
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        sock.send(&payload).map_err(|e| format!("send {i}: {e}"))?;
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("echo {i} of {count} never came back: {e}"))?;
        if n != size {
            return Err(format!("echo {i} came back with {n} bytes, sent {size}"));
        }
    }
    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
    println!("{{\"sent\":{count},\"echoed\":{count},\"size\":{size},\"sourcePort\":{port}}}");
    Ok(())
}

fn tcp_sink(port: &str) -> Result<(), String> {
    let port: u16 = number("PORT", port)?;
    let listener = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| format!("listen tcp {port}: {e}"))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            // Tell the sender how much arrived, then close (our FIN).
            let _ = conn.write_all(format!("{total}\n").as_bytes());
            let _ = conn.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

fn tcp_send(to: &str, bytes: &str) -> Result<(), String> {
    let to = address(to)?;
    let bytes: u64 = number("BYTES", bytes)?;
    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    let chunk = vec![0xa5u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..n])
            .map_err(|e| format!("send: {e}"))?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .map_err(|e| format!("reading the server's count: {e}"))?;
    let received: u64 = number("the server's count", reply.trim())?;
    if received != bytes {
        return Err(format!(
            "the server received {received} bytes, {bytes} were sent"
        ));
    }
    let report = weir_e2e::traffic::tcp_info(&conn).map_err(|e| format!("{e:#}"))?;
    let (sent, retrans) = (report.bytes_sent, report.bytes_retrans);
    let port = conn.local_addr().map_err(|e| e.to_string())?.port();
    println!(
        "{{\"bytes\":{bytes},\"received\":{received},\"bytesSent\":{sent},\"bytesRetrans\":{retrans},\"sourcePort\":{port}}}"
    );
    Ok(())
}
