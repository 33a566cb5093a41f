//! Network namespaces owned by a test: created on construction, deleted on
//! drop, and a way to run code inside one on a dedicated thread (setns is
//! per-thread, so the caller's thread never changes namespace).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `/run/netns/<name>` with loopback up; an existing one with the
    /// same name (left by a crashed run) is replaced.
    pub fn create(name: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace with `nsenter`, which (unlike
    /// `ip netns exec`) leaves /sys and bpffs as they are.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(argv);
        cmd
    }

    /// Runs `argv` inside and returns stdout; a non-zero exit is an error that
    /// carries stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let out = run(&mut self.command(argv))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `work` on a new thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(work)?
            .join()
            .map_err(|_| anyhow::anyhow!("thread inside {} panicked", self.name))?
    }

    /// Starts `work` on a new thread that has entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let file =
            File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        let name = self.name.clone();
        Ok(std::thread::spawn(move || -> Result<T> {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {name}: {}", std::io::Error::last_os_error());
            }
            Ok(work())
        }))
    }

    /// One line per interface: "name kind mac mtu state", sorted — what the
    /// pod would see, read with iproute2 so weir's code is not its own judge.
    pub fn links(&self) -> Result<Vec<String>> {
        let json: serde_json::Value =
            serde_json::from_str(&self.exec(&["ip", "-j", "-d", "link", "show"])?)?;
        let mut lines: Vec<String> = json
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} {} {} {} {}",
                    l["ifname"].as_str().unwrap_or("?"),
                    l["linkinfo"]["info_kind"].as_str().unwrap_or("-"),
                    l["address"].as_str().unwrap_or("-"),
                    l["mtu"],
                    if l["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "UP"))
                    {
                        "up"
                    } else {
                        "down"
                    },
                )
            })
            .collect();
        lines.sort();
        Ok(lines)
    }

    /// Global addresses as "dev addr/prefix", sorted (link-local ones are
    /// derived by the kernel and omitted).
    pub fn addresses(&self) -> Result<Vec<String>> {
        let json: serde_json::Value =
            serde_json::from_str(&self.exec(&["ip", "-j", "addr", "show"])?)?;
        let mut lines = Vec::new();
        for link in json.as_array().into_iter().flatten() {
            for addr in link["addr_info"].as_array().into_iter().flatten() {
                if addr["scope"] == "global" {
                    lines.push(format!(
                        "{} {}/{}",
                        link["ifname"].as_str().unwrap_or("?"),
                        addr["local"].as_str().unwrap_or("?"),
                        addr["prefixlen"]
                    ));
                }
            }
        }
        lines.sort();
        Ok(lines)
    }

    /// Routes of the main tables of both families, as iproute2 prints them.
    pub fn routes(&self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for family in ["-4", "-6"] {
            for line in self.exec(&["ip", family, "route", "show"])?.lines() {
                // Kernel-made IPv6 link-local and multicast routes are not the pod's config.
                if !line.starts_with("fe80::/64") && !line.starts_with("multicast") {
                    lines.push(line.trim().replace(" linkdown", ""));
                }
            }
        }
        lines.sort();
        Ok(lines)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}
