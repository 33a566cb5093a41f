//! The node agent as tests and benchmarks run it: `weir-operator agent run`
//! as a child process, waited for on its `/readyz`, killed when dropped,
//! and plain HTTP GETs of its endpoint (inside the namespace it listens in).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Where an agent listens: an address, inside a namespace or in ours.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub ns: Option<&'a Netns>,
    pub addr: SocketAddr,
}

impl Endpoint<'_> {
    /// `GET path`; the body of a 200 answer, an error otherwise.
    /// `read_timeout` bounds the wait for the whole answer.
    pub fn get(&self, path: &str, read_timeout: Duration) -> Result<String> {
        let (addr, path_owned) = (self.addr, path.to_string());
        let get = move || http_get(addr, &path_owned, read_timeout);
        match self.ns {
            Some(ns) => ns.run(get)?,
            None => get(),
        }
    }
}

/// `GET path` from `addr` in the current network namespace: the body of a
/// 200 answer, an error otherwise.
pub fn http_get(addr: SocketAddr, path: &str, read_timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(read_timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{path}: {head}");
    }
    Ok(body.to_string())
}

/// A running agent; killed (SIGKILL) and reaped when dropped.
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Runs `cmd` (the agent, or `nsenter ... agent`; it must exec the agent
    /// so the child's pid is the agent's) with stderr to `log`, and waits up
    /// to `timeout` for `/readyz` to answer 200 at `endpoint`.
    pub fn spawn(
        cmd: Command,
        log: &Path,
        endpoint: Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut agent = Self::start(cmd, log)?;
        agent.wait_ready(endpoint, timeout)?;
        Ok(agent)
    }

    /// Runs `cmd` with stderr to `log`, without waiting for anything: for
    /// the agent, [`spawn`](Self::spawn); for another of the operator's
    /// processes (the controller), this.
    pub fn start(mut cmd: Command, log: &Path) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?,
            ))
            .spawn()
            .with_context(|| format!("starting the agent: {cmd:?}"))?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Waits up to `timeout` for `/readyz` to answer 200 at `endpoint` (the
    /// agent collected once: maps read, flannel's devices looked for and
    /// attached to, and with the API server its caches synced); fails with
    /// the log when the process exits or the time is up.
    pub fn wait_ready(&mut self, endpoint: Endpoint<'_>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while endpoint.get("/readyz", Duration::from_secs(5)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}); log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("the agent did not come up; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, under its path.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {}:\n{}",
            self.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// `kill -9`, and reaped.
    pub fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and its exit status once it stopped.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid (not reaped yet).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        Ok(self.child.wait()?)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
