//! A TCP relay into another network namespace: a listening socket made
//! inside a namespace (a test node's), every connection to it forwarded to
//! an address of the test's own namespace. The control plane listens on the
//! host's loopback; a node agent running in a node namespace reaches it
//! through the relay (the bytes are relayed as they are: TLS stays between
//! the agent and the API server, whose certificate names 127.0.0.1).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

use anyhow::{Context, Result};

use crate::netns::Netns;

/// A running relay; it lives as long as the process.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    /// The port on 127.0.0.1 inside the namespace.
    pub port: u16,
}

/// Listens on `127.0.0.1:<free port>` inside `ns` and forwards each
/// connection to `target` from the caller's namespace.
pub fn start(ns: &Netns, target: SocketAddr) -> Result<Relay> {
    let listener = ns
        .run(|| TcpListener::bind("127.0.0.1:0"))?
        .with_context(|| format!("listening inside {}", ns.name()))?;
    let port = listener.local_addr()?.port();
    // Threads started here are in the caller's namespace (a socket keeps the
    // namespace it was made in).
    thread::Builder::new()
        .name(format!("relay-{}", ns.name()))
        .spawn(move || {
            for inbound in listener.incoming().flatten() {
                thread::spawn(move || {
                    if let Ok(outbound) = TcpStream::connect(target) {
                        pipe(inbound, outbound);
                    }
                });
            }
        })?;
    Ok(Relay { port })
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let forward = thread::spawn(move || copy(a, b));
    copy(b2, a2);
    let _ = forward.join();
}

/// Copies until EOF or an error, then closes the writing side.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
