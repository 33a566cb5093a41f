//! The per-attachment entry stub: a dozen instructions, loaded for each half
//! of each pod interface's split, that hand the per-attachment values to the
//! node's split program (`weir_split` in `c/split.bpf.c`) and tail-call it.
//!
//! ```text
//! cb[POD_ID] = pod_id; cb[TARGET_IFINDEX] = target; cb[DIRECTION] = direction
//! cb[VIA_PEER] = via_peer
//! tail_call(ctx, weir_split_jump, 0)
//! return bpf_redirect[_peer](target, 0)   // only if the tail call failed
//! ```
//!
//! Why a stub instead of one full program per pod: the node program is
//! verified once per node, a stub in microseconds, and a pod ADD never parses
//! the kernel's BTF. ifindexes are only unique per netns, so they travel in
//! the stub's immediates, never through a node-wide map. When the jump slot is
//! empty (node program not loaded, pins removed) the stub still forwards: a
//! pod never loses its network because of weir's own state.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

use crate::{abi::Direction, sys};

/// The values one stub carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StubSpec {
    pub pod_id: u32,
    /// Where frames go: `wi-<if>` for the outer half, `wx-<if>` for the inner.
    pub target_ifindex: u32,
    pub direction: Direction,
    /// Redirect to the target's veth peer (`bpf_redirect_peer`): only for
    /// the inner half, and only when `wx-<if>`'s peer is in another netns.
    pub via_peer: bool,
}

/// `offsetof(struct __sk_buff, cb)`, uapi and stable.
const SKB_CB_OFFSET: i16 = 48;
/// `enum weir_cb_slot` in `c/weir_abi.h`.
const CB_POD_ID: i16 = 0;
const CB_TARGET_IFINDEX: i16 = 1;
const CB_DIRECTION: i16 = 2;
const CB_VIA_PEER: i16 = 3;

const BPF_FUNC_TAIL_CALL: i32 = 12;
const BPF_FUNC_REDIRECT: i32 = 23;
const BPF_FUNC_REDIRECT_PEER: i32 = 155;
const BPF_PSEUDO_MAP_FD: u8 = 1;

// opcodes
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf | (src & 0xf) << 4) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

fn cb_slot(slot: i16) -> i16 {
    SKB_CB_OFFSET + 4 * slot
}

/// The stub's instructions. Registers 2, 3, 4 and 5 carry pod id, target,
/// direction and the peer flag into their stores, so [`decode`] finds them again in the
/// verifier's output (the movs survive it unchanged).
pub(crate) fn instructions(spec: &StubSpec, jump_map: BorrowedFd<'_>) -> Vec<u64> {
    let target = spec.target_ifindex as i32;
    vec![
        insn(MOV64_IMM, 2, 0, 0, spec.pod_id as i32),
        insn(STX_W, 1, 2, cb_slot(CB_POD_ID), 0),
        insn(MOV64_IMM, 3, 0, 0, target),
        insn(STX_W, 1, 3, cb_slot(CB_TARGET_IFINDEX), 0),
        insn(MOV64_IMM, 4, 0, 0, spec.direction as i32),
        insn(STX_W, 1, 4, cb_slot(CB_DIRECTION), 0),
        insn(MOV64_IMM, 5, 0, 0, i32::from(spec.via_peer)),
        insn(STX_W, 1, 5, cb_slot(CB_VIA_PEER), 0),
        // r1 is still the context, as bpf_tail_call wants it
        insn(LD_IMM64, 2, BPF_PSEUDO_MAP_FD, 0, jump_map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_TAIL_CALL),
        // only reached when the slot is empty: forward without counting
        insn(MOV64_IMM, 1, 0, 0, target),
        insn(MOV64_IMM, 2, 0, 0, 0),
        insn(
            CALL,
            0,
            0,
            0,
            if spec.via_peer {
                BPF_FUNC_REDIRECT_PEER
            } else {
                BPF_FUNC_REDIRECT
            },
        ),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

const LICENSE: &CStr = c"Apache-2.0";

/// Loads a stub bound to `jump_map` (the node's `weir_split_jump`).
pub(crate) fn load(spec: &StubSpec, jump_map: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    sys::prog_load(
        sys::BPF_PROG_TYPE_SCHED_CLS,
        &instructions(spec, jump_map),
        LICENSE,
        name,
    )
}

/// Reads a stub's values back from its verified instructions (CNI CHECK).
/// `None` when they are not a stub's.
pub(crate) fn decode(xlated: &[u64]) -> Option<StubSpec> {
    let mov_imm = |i: usize, reg: u8| -> Option<u32> {
        let raw = *xlated.get(i)?;
        let code = raw as u8;
        let dst = (raw >> 8) as u8 & 0xf;
        (code == MOV64_IMM && dst == reg).then_some((raw >> 32) as u32)
    };
    let pod_id = mov_imm(0, 2)?;
    let target_ifindex = mov_imm(2, 3)?;
    let direction = match mov_imm(4, 4)? {
        0 => Direction::FromPod,
        1 => Direction::ToPod,
        _ => return None,
    };
    let via_peer = match mov_imm(6, 5)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some(StubSpec {
        pod_id,
        target_ifindex,
        direction,
        via_peer,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn encodes_like_the_kernel_reads() {
        // mov64 r2, 7  ->  b7 02 00 00 07 00 00 00
        assert_eq!(
            insn(MOV64_IMM, 2, 0, 0, 7).to_le_bytes(),
            [0xb7, 0x02, 0, 0, 7, 0, 0, 0]
        );
        // *(u32 *)(r1 + 52) = r3  ->  63 31 34 00 00 00 00 00
        assert_eq!(
            insn(STX_W, 1, 3, 52, 0).to_le_bytes(),
            [0x63, 0x31, 0x34, 0, 0, 0, 0, 0]
        );
        // negative immediates keep their two's complement bits
        assert_eq!(insn(MOV64_IMM, 1, 0, 0, -1) >> 32, 0xffff_ffff);
    }

    #[test]
    fn decode_reads_back_what_instructions_wrote() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        for spec in [
            StubSpec {
                pod_id: 7,
                target_ifindex: 12,
                direction: Direction::ToPod,
                via_peer: false,
            },
            StubSpec {
                pod_id: u32::MAX,
                target_ifindex: 0x8000_0001,
                direction: Direction::FromPod,
                via_peer: true,
            },
        ] {
            let insns = instructions(&spec, devnull.as_fd());
            assert_eq!(decode(&insns), Some(spec));
        }
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[insn(EXIT, 0, 0, 0, 0)]), None);
    }
}
