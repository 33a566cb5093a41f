//! Where the per-instance globals sit inside `.rodata` of the embedded object.
//!
//! `verify` reads the live `.rodata` map of an attached program to prove it
//! forwards to the right ifindexes for the right pod; the offsets come from the
//! object's own symbol table, so they follow whatever layout clang chose.

const SHT_SYMTAB: u32 = 2;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}
fn cstr_at(b: &[u8], off: usize) -> Option<&[u8]> {
    let tail = b.get(off..)?;
    let end = tail.iter().position(|&c| c == 0)?;
    Some(&tail[..end])
}

struct Section<'a> {
    name: &'a [u8],
    kind: u32,
    data: &'a [u8],
    link: u32,
}

fn sections(elf: &[u8]) -> Option<Vec<Section<'_>>> {
    // ELF64 little endian (clang -target bpf on a little-endian host: bpfel)
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let shstrndx = u16_at(elf, 0x3e)? as usize;
    let header = |i: usize| -> Option<(u32, u32, &[u8], u32)> {
        let h = elf.get(shoff + i * shentsize..shoff + (i + 1) * shentsize)?;
        let off = u64_at(h, 24)? as usize;
        let size = u64_at(h, 32)? as usize;
        let kind = u32_at(h, 4)?;
        // SHT_NOBITS has no file data
        let data = if kind == 8 {
            &[][..]
        } else {
            elf.get(off..off + size)?
        };
        Some((u32_at(h, 0)?, kind, data, u32_at(h, 40)?))
    };
    let (_, _, shstr, _) = header(shstrndx)?;
    (0..shnum)
        .map(|i| {
            let (name, kind, data, link) = header(i)?;
            Some(Section {
                name: cstr_at(shstr, name as usize)?,
                kind,
                data,
                link,
            })
        })
        .collect()
}

/// Offsets of `names` in the `.rodata` section, and that section's size.
pub(crate) fn rodata_offsets<const N: usize>(
    elf: &[u8],
    names: [&str; N],
) -> Option<([usize; N], usize)> {
    let secs = sections(elf)?;
    let rodata_idx = secs.iter().position(|s| s.name == b".rodata")?;
    let symtab = secs.iter().find(|s| s.kind == SHT_SYMTAB)?;
    let strtab = secs.get(symtab.link as usize)?;
    let mut found = [None; N];
    for sym in symtab.data.chunks_exact(24) {
        let shndx = u16_at(sym, 6)? as usize;
        if shndx != rodata_idx {
            continue;
        }
        let name = cstr_at(strtab.data, u32_at(sym, 0)? as usize)?;
        if let Some(i) = names.iter().position(|n| n.as_bytes() == name) {
            found[i] = Some(u64_at(sym, 8)? as usize);
        }
    }
    let mut out = [0usize; N];
    for (o, f) in out.iter_mut().zip(found) {
        *o = f?;
    }
    Some((out, secs[rodata_idx].data.len()))
}
