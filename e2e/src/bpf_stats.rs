//! The kernel's run-time statistics of BPF programs (`BPF_ENABLE_STATS`):
//! how long weir's own programs ran, measured by the kernel around each run,
//! whatever else the host was doing. The benchmarks turn them on for one
//! measured run only, since they cost two clock reads per program run.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::netns;

const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Statistics are collected while this is alive.
pub struct StatsOn {
    _fd: OwnedFd,
}

pub fn enable() -> Result<StatsOn> {
    let mut kind: u32 = BPF_STATS_RUN_TIME;
    // SAFETY: the attr for BPF_ENABLE_STATS is one u32; we pass its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &mut kind as *mut u32,
            size_of::<u32>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
    }
    Ok(StatsOn {
        // SAFETY: bpf(BPF_ENABLE_STATS) returned a new fd that nothing else owns.
        _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
    })
}

/// One loaded program as `bpftool prog show` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prog {
    pub id: u64,
    pub name: String,
    pub map_ids: Vec<u64>,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl Prog {
    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v["id"].as_u64()?,
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            map_ids: v["map_ids"]
                .as_array()
                .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            run_time_ns: v["run_time_ns"].as_u64().unwrap_or(0),
            run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
        })
    }
}

/// Every loaded program (ids are host-wide, not per netns).
pub fn programs() -> Result<Vec<Prog>> {
    let out = netns::run(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let all: Value = serde_json::from_slice(&out.stdout).context("bpftool -j prog show")?;
    Ok(all
        .as_array()
        .map(|list| list.iter().filter_map(Prog::from_json).collect())
        .unwrap_or_default())
}

/// One program, by id.
pub fn program(id: u64) -> Result<Prog> {
    let out =
        netns::run(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool -j prog show id")?;
    Prog::from_json(&v).with_context(|| format!("no program id {id} in {v}"))
}
