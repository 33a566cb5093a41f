//! Frame builders for the programs' tests and bench/prog-probe (which
//! includes this file by path). Checksums are irrelevant to the parser.

pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&POD_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn eth_vlan(vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&POD_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header with `options` (a multiple of 4 bytes) and a fragment offset in 8-byte units.
pub fn ipv4(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: &[u8],
    frag_offset: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4));
    let ihl = (20 + options.len()) / 4;
    let total = 20 + options.len() + payload.len();
    let mut h = vec![
        0x40 | ihl as u8,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        (frag_offset >> 8) as u8 & 0x1f,
        frag_offset as u8,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

pub fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// TCP header with `opt_words` 32-bit words of options (NOPs), then payload.
pub fn tcp(sport: u16, dport: u16, flags: u8, opt_words: usize, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.push(((5 + opt_words) as u8) << 4);
    h.push(flags);
    h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    h.extend(std::iter::repeat_n(1u8, opt_words * 4));
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn icmp(ty: u8, code: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0, 0, 1, 0, 1];
    h.extend_from_slice(payload);
    h
}

pub fn arp_request() -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&PEER_MAC);
    a.extend_from_slice(&[192, 0, 2, 1]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[192, 0, 2, 2]);
    eth(0x0806, &a)
}
