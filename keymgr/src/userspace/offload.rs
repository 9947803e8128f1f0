//! TUN offloads (sans-IO): with `IFF_VNET_HDR` and `TUNSETOFFLOAD`, the kernel hands the tunnel
//! TCP "super-packets" of up to 64 KiB (TSO) with partial checksums, instead of one MTU-sized
//! packet per read. One read then replaces ~45, which is where wireguard-go found its speed.
//! This module turns such a read into ordinary IP packets ready for encryption, and frames packets
//! written back to the TUN device.
//!
//! ```text
//!  read:  [virtio_net_hdr 10 B][IPv4/IPv6][TCP][payload up to 64 KiB]
//!           gso_type TCPV4/6, gso_size = MSS, NEEDS_CSUM (csum_start, csum_offset)
//!  split: [IP][TCP seq+0   ][MSS] [IP][TCP seq+MSS][MSS] …  lengths, ids, seqs, checksums fixed
//! ```
//!
//! The header's fields are in native byte order (the TUN default without `TUNSETVNETBE`).

/// Length of `struct virtio_net_hdr`.
pub(crate) const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The header written in front of every packet handed to the TUN device: no offload, and the
/// checksum is not to be verified again, because WireGuard authenticated the whole packet (the
/// kernel's WireGuard marks decrypted packets `CHECKSUM_UNNECESSARY` for the same reason).
pub(crate) const WRITE_HDR: [u8; VNET_HDR_LEN] = [F_DATA_VALID, GSO_NONE, 0, 0, 0, 0, 0, 0, 0, 0];

/// Why a packet read from the TUN device could not be split (it is dropped).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SplitError {
    /// Shorter than its headers claim.
    Truncated,
    /// An offload this tunnel did not ask for.
    Unsupported(u8),
}

/// Splits one TUN read (`virtio_net_hdr` included) into IP packets and passes each to `emit`.
/// `scratch` is reused between calls to build segments.
pub(crate) fn split(
    read: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SplitError> {
    if read.len() < VNET_HDR_LEN {
        return Err(SplitError::Truncated);
    }
    let (hdr, packet) = read.split_at_mut(VNET_HDR_LEN);
    let flags = hdr[0];
    let gso_type = hdr[1] & !GSO_ECN;
    let gso_size = usize::from(u16::from_ne_bytes([hdr[4], hdr[5]]));
    let csum_start = usize::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
    let csum_offset = usize::from(u16::from_ne_bytes([hdr[8], hdr[9]]));
    match gso_type {
        GSO_NONE => {
            if flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, csum_start, csum_offset)?;
            }
            emit(packet);
            Ok(())
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(packet, gso_size, scratch, emit),
        other => Err(SplitError::Unsupported(other)),
    }
}

/// Finishes a `CHECKSUM_PARTIAL` checksum: the field already holds the pseudo-header sum, so the
/// checksum over everything from `start` (field included) completes it.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), SplitError> {
    let field = start + offset;
    if field + 2 > packet.len() {
        return Err(SplitError::Truncated);
    }
    let sum = fold(sum16(&packet[start..], 0));
    packet[field..field + 2].copy_from_slice(&(!sum).to_be_bytes());
    Ok(())
}

fn segment_tcp(
    packet: &[u8],
    mss: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SplitError> {
    let version = packet.first().ok_or(SplitError::Truncated)? >> 4;
    let ip_len = match version {
        4 => usize::from(packet[0] & 0x0f) * 4,
        6 => {
            // Next header must be TCP directly: the kernel does not build TSO packets with
            // extension headers for a TUN device.
            if packet.get(6) != Some(&6) {
                return Err(SplitError::Unsupported(GSO_TCPV6));
            }
            40
        }
        _ => return Err(SplitError::Truncated),
    };
    let tcp_len = usize::from(*packet.get(ip_len + 12).ok_or(SplitError::Truncated)? >> 4) * 4;
    let header_len = ip_len + tcp_len;
    if packet.len() < header_len || mss == 0 {
        return Err(SplitError::Truncated);
    }
    let (headers, payload) = packet.split_at(header_len);
    let seq0 = u32::from_be_bytes([
        headers[ip_len + 4],
        headers[ip_len + 5],
        headers[ip_len + 6],
        headers[ip_len + 7],
    ]);
    let id0 = u16::from_be_bytes([headers[4], headers[5]]);
    let chunks = payload.len().div_ceil(mss).max(1);
    for (k, chunk) in payload.chunks(mss).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(headers);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        let last = k + 1 == chunks;
        if version == 4 {
            let len = u16::try_from(total).map_err(|_| SplitError::Truncated)?;
            scratch[2..4].copy_from_slice(&len.to_be_bytes());
            let id = id0.wrapping_add(u16::try_from(k).unwrap_or(u16::MAX));
            scratch[4..6].copy_from_slice(&id.to_be_bytes());
            scratch[10..12].copy_from_slice(&[0, 0]);
            let sum = !fold(sum16(&scratch[..ip_len], 0));
            scratch[10..12].copy_from_slice(&sum.to_be_bytes());
        } else {
            let len = u16::try_from(total - 40).map_err(|_| SplitError::Truncated)?;
            scratch[4..6].copy_from_slice(&len.to_be_bytes());
        }
        let tcp = ip_len;
        let offset = u32::try_from(k * mss).unwrap_or(u32::MAX);
        scratch[tcp + 4..tcp + 8].copy_from_slice(&seq0.wrapping_add(offset).to_be_bytes());
        if !last {
            scratch[tcp + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if k > 0 {
            scratch[tcp + 13] &= !TCP_CWR;
        }
        scratch[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
        let tcp_total = u32::try_from(total - tcp).unwrap_or(u32::MAX);
        let pseudo = if version == 4 {
            sum16(&scratch[12..20], 6 + tcp_total)
        } else {
            sum16(&scratch[8..40], 6 + tcp_total)
        };
        let sum = !fold(sum16(&scratch[tcp..], pseudo));
        scratch[tcp + 16..tcp + 18].copy_from_slice(&sum.to_be_bytes());
        emit(scratch);
    }
    Ok(())
}

/// One's-complement sum of big-endian 16-bit words (odd byte padded), added to `initial`.
fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*b, 0]));
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    u32::try_from(sum).unwrap_or(u32::MAX)
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Where the fields of a TCP segment are, once checked to be plain (IPv4 without options or
/// IPv6 without extension headers).
struct TcpSegment {
    ip_len: usize,
    header_len: usize,
    seq: u32,
    flags: u8,
    payload_len: usize,
}

fn parse_tcp(p: &[u8]) -> Option<TcpSegment> {
    let ip_len = match p.first()? >> 4 {
        4 if p[0] & 0x0f == 5 && p.get(9) == Some(&6) => {
            // Fragments never coalesce.
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            if frag & 0x3fff != 0 {
                return None;
            }
            20
        }
        6 if p.get(6) == Some(&6) => 40,
        _ => return None,
    };
    let tcp_len = usize::from(*p.get(ip_len + 12)? >> 4) * 4;
    let header_len = ip_len + tcp_len;
    if tcp_len < 20 || p.len() < header_len {
        return None;
    }
    let seq = u32::from_be_bytes([p[ip_len + 4], p[ip_len + 5], p[ip_len + 6], p[ip_len + 7]]);
    Some(TcpSegment {
        ip_len,
        header_len,
        seq,
        flags: p[ip_len + 13],
        payload_len: p.len() - header_len,
    })
}

/// Whether two headers of the same length are equal outside the fields that differ between
/// segments of one burst (lengths, IPv4 id and checksum, TCP sequence, flags and checksum).
fn same_flow(a: &[u8], b: &[u8], ip_len: usize, header_len: usize) -> bool {
    let tcp = ip_len;
    (0..header_len).all(|i| {
        let varies = if ip_len == 20 {
            matches!(i, 2..=5 | 10 | 11)
        } else {
            matches!(i, 4 | 5)
        } || (tcp + 4..tcp + 8).contains(&i)
            || i == tcp + 13
            || i == tcp + 16
            || i == tcp + 17;
        varies || a[i] == b[i]
    })
}

/// TCP flags a segment may carry and still be merged with the next one: ACK alone.
const TCP_ACK: u8 = 0x10;

/// How many of the packets at the head of `packets` one super-packet can carry (GRO for the TUN
/// write): one TCP flow, contiguous sequence numbers, all full-size but the last, plain ACKs but
/// the last (which may add PSH), under 64 KiB in all. 1 when nothing merges.
pub(crate) fn tcp_run<'a>(mut packets: impl Iterator<Item = &'a [u8]>) -> usize {
    let Some(first) = packets.next() else {
        return 0;
    };
    let Some(head) = parse_tcp(first) else {
        return 1;
    };
    if head.flags != TCP_ACK || head.payload_len == 0 {
        return 1;
    }
    let mut run = 1;
    let mut total = first.len();
    let mut next_seq = head
        .seq
        .wrapping_add(u32::try_from(head.payload_len).unwrap_or(0));
    for p in packets {
        let Some(seg) = parse_tcp(p) else { break };
        let fits = seg.ip_len == head.ip_len
            && seg.header_len == head.header_len
            && seg.seq == next_seq
            && seg.payload_len > 0
            && seg.payload_len <= head.payload_len
            && (seg.flags == TCP_ACK || seg.flags == TCP_ACK | TCP_PSH)
            && total + seg.payload_len <= 65_535
            && same_flow(first, p, head.ip_len, head.header_len);
        if !fits {
            break;
        }
        run += 1;
        total += seg.payload_len;
        next_seq = next_seq.wrapping_add(u32::try_from(seg.payload_len).unwrap_or(0));
        // A short segment or a push ends the burst.
        if seg.payload_len < head.payload_len || seg.flags != TCP_ACK {
            break;
        }
    }
    run
}

/// Builds, into `out`, one TUN write (virtio header included) carrying `packets`, a run that
/// [`tcp_run`] accepted: the first headers with the total length, the last segment's flags, and
/// a partial checksum the kernel completes per segment when it splits the packet again.
pub(crate) fn coalesce(packets: &[&[u8]], out: &mut Vec<u8>) -> Option<()> {
    let first = *packets.first()?;
    let head = parse_tcp(first)?;
    let last = parse_tcp(packets.last()?)?;
    out.clear();
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = if head.ip_len == 20 {
        GSO_TCPV4
    } else {
        GSO_TCPV6
    };
    hdr[2..4].copy_from_slice(&u16::try_from(head.header_len).ok()?.to_ne_bytes());
    hdr[4..6].copy_from_slice(&u16::try_from(head.payload_len).ok()?.to_ne_bytes());
    hdr[6..8].copy_from_slice(&u16::try_from(head.ip_len).ok()?.to_ne_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&first[..head.header_len]);
    for p in packets {
        out.extend_from_slice(&p[head.header_len..]);
    }
    let packet = &mut out[VNET_HDR_LEN..];
    let total = packet.len();
    let tcp = head.ip_len;
    packet[tcp + 13] = last.flags;
    if head.ip_len == 20 {
        packet[2..4].copy_from_slice(&u16::try_from(total).ok()?.to_be_bytes());
        packet[10..12].copy_from_slice(&[0, 0]);
        let sum = !fold(sum16(&packet[..20], 0));
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        packet[4..6].copy_from_slice(&u16::try_from(total - 40).ok()?.to_be_bytes());
    }
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
    let tcp_total = u32::try_from(total - tcp).ok()?;
    let pseudo = if head.ip_len == 20 {
        sum16(&packet[12..20], 6 + tcp_total)
    } else {
        sum16(&packet[8..40], 6 + tcp_total)
    };
    packet[tcp + 16..tcp + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 packet with a correct checksum, payload `len` bytes of a counter.
    fn tcp4(len: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + len];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&100u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn ipv4_ok(p: &[u8]) -> bool {
        fold(sum16(&p[..20], 0)) == 0xffff
    }

    fn tcp4_ok(p: &[u8]) -> bool {
        let tcp_len = (p.len() - 20) as u32;
        let pseudo = sum16(&p[12..20], 6 + tcp_len);
        fold(sum16(&p[20..], pseudo)) == 0xffff
    }

    fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h[2..4].copy_from_slice(&40u16.to_ne_bytes());
        h[4..6].copy_from_slice(&gso_size.to_ne_bytes());
        h[6..8].copy_from_slice(&start.to_ne_bytes());
        h[8..10].copy_from_slice(&offset.to_ne_bytes());
        h
    }

    #[test]
    fn tso_packet_splits_into_valid_segments() {
        let packet = tcp4(3000, TCP_PSH | TCP_FIN | 0x10);
        let mut read = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1380, 20, 16).to_vec();
        read.extend_from_slice(&packet);
        let mut segs = Vec::new();
        split(&mut read, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut payload = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            assert!(ipv4_ok(s), "ip checksum of segment {k}");
            assert!(tcp4_ok(s), "tcp checksum of segment {k}");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + k as u16);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1000 + 1380 * k as u32);
            let last = k == 2;
            assert_eq!(s[33] & (TCP_FIN | TCP_PSH) != 0, last);
            payload.extend_from_slice(&s[40..]);
        }
        assert_eq!(payload, packet[40..].to_vec());
        assert_eq!(segs[2].len(), 40 + 3000 - 2 * 1380);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut packet = tcp4(100, 0x18);
        // What the kernel hands over for CHECKSUM_PARTIAL: the pseudo-header sum, uncomplemented.
        let pseudo = fold(sum16(&packet[12..20], 6 + 120));
        packet[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let mut read = hdr(F_NEEDS_CSUM, GSO_NONE, 0, 20, 16).to_vec();
        read.extend_from_slice(&packet);
        let mut out = Vec::new();
        split(&mut read, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out.len(), 1);
        assert!(tcp4_ok(&out[0]));
    }

    #[test]
    fn plain_packet_passes_unchanged() {
        let packet = tcp4(10, 0x10);
        let mut read = hdr(0, GSO_NONE, 0, 0, 0).to_vec();
        read.extend_from_slice(&packet);
        let mut out = Vec::new();
        split(&mut read, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out, vec![packet]);
    }

    #[test]
    fn short_or_unknown_reads_are_refused() {
        assert_eq!(
            split(&mut [0u8; 4], &mut Vec::new(), |_| {}),
            Err(SplitError::Truncated)
        );
        let mut read = hdr(0, 3, 1000, 0, 0).to_vec();
        read.extend_from_slice(&tcp4(10, 0));
        assert_eq!(
            split(&mut read, &mut Vec::new(), |_| {}),
            Err(SplitError::Unsupported(3))
        );
    }

    #[test]
    fn coalesced_burst_splits_back_into_the_same_segments() {
        let big = tcp4(4000, 0x10);
        let mut read = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1380, 20, 16).to_vec();
        read.extend_from_slice(&big);
        let mut segs = Vec::new();
        split(&mut read, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        // The last segment of a burst may carry PSH.
        let last = segs.len() - 1;
        segs[last][33] |= TCP_PSH;
        let refs: Vec<&[u8]> = segs.iter().map(Vec::as_slice).collect();
        assert_eq!(tcp_run(refs.iter().copied()), 3);
        let mut merged = Vec::new();
        coalesce(&refs, &mut merged).unwrap();
        assert_eq!(merged.len(), VNET_HDR_LEN + 40 + 4000);
        assert_eq!(merged[1], GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([merged[4], merged[5]]), 1380);
        assert_eq!(merged[VNET_HDR_LEN + 33], 0x10 | TCP_PSH);
        // Splitting it the way the kernel would gives the segments back, checksums valid.
        let mut again = Vec::new();
        split(&mut merged, &mut Vec::new(), |s| again.push(s.to_vec())).unwrap();
        assert_eq!(again.len(), 3);
        for (a, b) in again.iter().zip(&segs) {
            assert!(tcp4_ok(a) && ipv4_ok(a));
            assert_eq!(a[40..], b[40..]);
            assert_eq!(a[24..28], b[24..28]);
        }
    }

    #[test]
    fn runs_stop_at_gaps_other_flows_and_non_tcp() {
        let a = tcp4(100, 0x10);
        let mut b = tcp4(100, 0x10);
        b[24..28].copy_from_slice(&1100u32.to_be_bytes());
        let mut gap = b.clone();
        gap[24..28].copy_from_slice(&9999u32.to_be_bytes());
        let mut other_port = b.clone();
        other_port[22..24].copy_from_slice(&81u16.to_be_bytes());
        let udp = {
            let mut u = a.clone();
            u[9] = 17;
            u
        };
        let syn = tcp4(0, 0x02);
        assert_eq!(tcp_run([a.as_slice(), b.as_slice()].into_iter()), 2);
        assert_eq!(tcp_run([a.as_slice(), gap.as_slice()].into_iter()), 1);
        assert_eq!(
            tcp_run([a.as_slice(), other_port.as_slice()].into_iter()),
            1
        );
        assert_eq!(tcp_run([udp.as_slice(), a.as_slice()].into_iter()), 1);
        assert_eq!(tcp_run([syn.as_slice(), a.as_slice()].into_iter()), 1);
    }

    /// A TCP/IPv6 packet, payload `len` bytes of a counter.
    fn tcp6(len: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 60 + len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + len) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[44..48].copy_from_slice(&7u32.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = flags;
        for (i, b) in p[60..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p
    }

    fn tcp6_ok(p: &[u8]) -> bool {
        let tcp_len = (p.len() - 40) as u32;
        let pseudo = sum16(&p[8..40], 6 + tcp_len);
        fold(sum16(&p[40..], pseudo)) == 0xffff
    }

    #[test]
    fn ipv6_tso_splits_and_coalesces_back() {
        let big = tcp6(2500, 0x10);
        let mut read = hdr(F_NEEDS_CSUM, GSO_TCPV6, 1200, 40, 16).to_vec();
        read.extend_from_slice(&big);
        let mut segs = Vec::new();
        split(&mut read, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        for (k, s) in segs.iter().enumerate() {
            assert!(tcp6_ok(s), "tcp checksum of segment {k}");
            assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, s.len() - 40);
            assert_eq!(
                u32::from_be_bytes([s[44], s[45], s[46], s[47]]),
                7 + 1200 * k as u32
            );
        }
        let refs: Vec<&[u8]> = segs.iter().map(Vec::as_slice).collect();
        assert_eq!(tcp_run(refs.iter().copied()), 3);
        let mut merged = Vec::new();
        coalesce(&refs, &mut merged).unwrap();
        assert_eq!(merged[1], GSO_TCPV6);
        // The merged packet is the original one, except that its checksum field holds the
        // pseudo-header sum the kernel completes per segment.
        let mut expect = big.clone();
        let pseudo = fold(sum16(&big[8..40], 6 + 20 + 2500));
        expect[56..58].copy_from_slice(&pseudo.to_be_bytes());
        assert_eq!(&merged[VNET_HDR_LEN..], &expect[..]);
    }
}
