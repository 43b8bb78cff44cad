//! A pcap file of synthesized TCP/IP packets (`LINKTYPE_RAW`: each record
//! an IPv4 or IPv6 packet), for `ipcd trace`: what tcpdump and Wireshark
//! read. Checksums are computed, so neither flags a packet as bad.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use ipcd_proto::SockAddr;

/// `LINKTYPE_RAW`: records start with the IP header.
const LINKTYPE_RAW: u32 = 101;

/// Largest payload per packet: an IPv4 packet's length field is 16 bits.
pub const MAX_PAYLOAD: usize = 65_000;

/// TCP flags.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One packet's TCP header fields.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Sender's address.
    pub from: SockAddr,
    /// Receiver's address.
    pub to: SockAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// [`flags`].
    pub flags: u8,
    /// Payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: &'a [u8],
}

/// Writes pcap records to `out`.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    packet: Vec<u8>,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    pub fn new(mut out: W) -> io::Result<PcapWriter<W>> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&262_144u32.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out, packet: Vec::new() })
    }

    /// Writes one packet, stamped `at`.
    pub fn write(&mut self, at: SystemTime, s: &Segment<'_>) -> io::Result<()> {
        build(&mut self.packet, s);
        let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let len = self.packet.len() as u32;
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&(t.as_secs() as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&t.subsec_micros().to_le_bytes());
        rec[8..12].copy_from_slice(&len.to_le_bytes());
        rec[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&rec)?;
        self.out.write_all(&self.packet)
    }

    /// Flushes what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The IP packet for `s` into `p`.
fn build(p: &mut Vec<u8>, s: &Segment<'_>) {
    p.clear();
    let tcp_len = 20 + s.payload.len();
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&s.from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&s.to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&s.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&s.ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = s.flags;
    tcp[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    // The pseudo-header's sum, then the segment's.
    let mut sum = Sum::default();
    match (s.from, s.to) {
        (SockAddr::V4 { ip: src, .. }, SockAddr::V4 { ip: dst, .. }) => {
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&src);
            ip[16..20].copy_from_slice(&dst);
            let mut h = Sum::default();
            h.add(&ip);
            ip[10..12].copy_from_slice(&h.finish().to_be_bytes());
            p.extend_from_slice(&ip);
            sum.add(&src);
            sum.add(&dst);
            sum.add(&[0, 6]);
            sum.add(&(tcp_len as u16).to_be_bytes());
        }
        (from, to) => {
            let (src, dst) = (v6(from), v6(to));
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src);
            ip[24..40].copy_from_slice(&dst);
            p.extend_from_slice(&ip);
            sum.add(&src);
            sum.add(&dst);
            sum.add(&(tcp_len as u32).to_be_bytes());
            sum.add(&[0, 0, 0, 6]);
        }
    }
    sum.add(&tcp);
    sum.add(s.payload);
    tcp[16..18].copy_from_slice(&sum.finish().to_be_bytes());
    p.extend_from_slice(&tcp);
    p.extend_from_slice(s.payload);
}

/// An address as IPv6 (IPv4 mapped), for a pair of mixed families.
fn v6(a: SockAddr) -> [u8; 16] {
    match a {
        SockAddr::V6 { ip, .. } => ip,
        SockAddr::V4 { ip, .. } => {
            let mut out = [0u8; 16];
            out[10] = 0xff;
            out[11] = 0xff;
            out[12..].copy_from_slice(&ip);
            out
        }
    }
}

/// The Internet checksum (RFC 1071), over pieces of even length but the
/// last.
#[derive(Default)]
struct Sum {
    acc: u64,
    odd: Option<u8>,
}

impl Sum {
    fn add(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if let Some(hi) = self.odd.take() {
            if let Some((&lo, r)) = rest.split_first() {
                self.acc += u64::from(u16::from_be_bytes([hi, lo]));
                rest = r;
            } else {
                self.odd = Some(hi);
                return;
            }
        }
        let mut pairs = rest.chunks_exact(2);
        for w in &mut pairs {
            self.acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        self.odd = pairs.remainder().first().copied();
    }

    fn finish(mut self) -> u16 {
        if let Some(hi) = self.odd.take() {
            self.acc += u64::from(u16::from_be_bytes([hi, 0]));
        }
        while self.acc >> 16 != 0 {
            self.acc = (self.acc & 0xffff) + (self.acc >> 16);
        }
        !(self.acc as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet's checksums verify: the sum over a header with its
    /// checksum in place is all ones.
    #[test]
    fn checksums_verify() {
        let from = SockAddr::V4 { ip: [127, 0, 0, 1], port: 40000 };
        let to = SockAddr::V4 { ip: [127, 0, 0, 1], port: 6379 };
        let mut p = Vec::new();
        build(&mut p, &Segment { from, to, seq: 1, ack: 1, flags: flags::PSH | flags::ACK, payload: b"PING\r\n!" });
        let mut ip = Sum::default();
        ip.add(&p[..20]);
        assert_eq!(ip.finish(), 0);
        let tcp = &p[20..];
        let mut t = Sum::default();
        t.add(&[127, 0, 0, 1, 127, 0, 0, 1, 0, 6]);
        t.add(&(tcp.len() as u16).to_be_bytes());
        t.add(tcp);
        assert_eq!(t.finish(), 0);
        assert_eq!(&p[40..], b"PING\r\n!");
    }
}
