//! BPF_PROG_TEST_RUN of a tc program on a crafted frame, for the programs'
//! tests and bench/prog-probe (which includes this file by path).

use std::os::fd::{AsRawFd, BorrowedFd};

/// The prefix of `struct __sk_buff` that BPF_PROG_TEST_RUN accepts as input
/// context; everything else must be zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SkBuffCtx(pub [u8; 192]);

impl SkBuffCtx {
    pub fn gso(segs: u32, size: u32) -> Self {
        let mut c = Self([0; 192]);
        c.0[164..168].copy_from_slice(&segs.to_ne_bytes()); // gso_segs
        c.0[176..180].copy_from_slice(&size.to_ne_bytes()); // gso_size
        c
    }
}

/// Runs a tc program once on `data` and returns its verdict.
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], ctx: Option<&SkBuffCtx>) -> u32 {
    test_run_repeated(prog, data, ctx, 1).0
}

/// Runs a tc program `repeat` times on `data`; returns its verdict and the
/// kernel's mean nanoseconds per run.
pub fn test_run_repeated(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&SkBuffCtx>,
    repeat: u32,
) -> (u32, u32) {
    // union bpf_attr, its `test` member
    let mut attr = [0u8; 80];
    let mut put = |off: usize, bytes: &[u8]| attr[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(prog.as_raw_fd() as u32).to_ne_bytes()); // prog_fd
    put(8, &(data.len() as u32).to_ne_bytes()); // data_size_in
    put(16, &(data.as_ptr() as u64).to_ne_bytes()); // data_in
    put(32, &repeat.to_ne_bytes()); // repeat
    if let Some(ctx) = ctx {
        put(40, &(std::mem::size_of::<SkBuffCtx>() as u32).to_ne_bytes()); // ctx_size_in
        put(48, &(ctx.0.as_ptr() as u64).to_ne_bytes()); // ctx_in
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr is a bpf_attr; the data and ctx it points to outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    assert!(
        rc == 0,
        "BPF_PROG_TEST_RUN failed: {}",
        std::io::Error::last_os_error()
    );
    let word = |off: usize| u32::from_ne_bytes(attr[off..off + 4].try_into().unwrap());
    (word(4), word(36)) // retval, duration
}
