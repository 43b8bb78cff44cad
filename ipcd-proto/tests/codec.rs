//! Codec properties: every message survives encode→decode; arbitrary bytes
//! never panic the decoder; every malformation has its typed error.

use ipcd_proto::message::*;
use ipcd_proto::{DecodeError, EncodeError, SockAddr};
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = SockAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SockAddr::V4 { ip, port }),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>())
            .prop_map(|(ip, port, flowinfo, scope_id)| SockAddr::V6 { ip, port, flowinfo, scope_id }),
    ]
}

fn info() -> impl Strategy<Value = ConnInfo> {
    (any::<u64>(), any::<bool>(), addr(), addr(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
        |(conn, b, local, peer, segment_len, segment, reused)| ConnInfo {
            conn,
            side: if b { Side::B } else { Side::A },
            local,
            peer,
            segment_len,
            segment,
            reused,
        },
    )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), 0u32..8).prop_map(
            |(version_min, version_max, pid, uid, caps)| Request::Hello {
                version_min,
                version_max,
                pid,
                uid,
                caps: Caps::from_bits_truncate(caps)
            }
        ),
        (any::<u64>(), addr(), any::<u32>(), 0u32..8).prop_map(|(listener, addr, backlog, f)| Request::Listen {
            listener,
            addr,
            backlog,
            flags: ListenFlags::from_bits_truncate(f)
        }),
        any::<u64>().prop_map(|listener| Request::Unlisten { listener }),
        (addr(), prop::option::of(addr()), any::<bool>()).prop_map(|(dest, source, nonblocking)| Request::Connect {
            dest,
            source,
            nonblocking
        }),
        (any::<u64>(), 0u8..3).prop_map(|(conn, how)| Request::Shutdown { conn, how }),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(conn, b, keep)| Request::Close {
            conn,
            side: if b { Side::B } else { Side::A },
            keep
        }),
        any::<u32>().prop_map(|parent_pid| Request::Forked { parent_pid }),
        Just(Request::ExecPrepare),
        (any::<u64>(), any::<bool>())
            .prop_map(|(conn, b)| Request::Reopen { conn, side: if b { Side::B } else { Side::A } }),
        Just(Request::Status),
        any::<u64>().prop_map(|conn| Request::Accepted { conn }),
        Just(Request::Stop),
        Just(Request::Ping),
        Just(Request::Bell),
        any::<u64>().prop_map(|id| Request::BellOf { id }),
        any::<u64>().prop_map(|id| Request::Unbell { id }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(conn, b)| Request::Pass { conn, side: if b { Side::B } else { Side::A } }),
        Just(Request::Claim),
        (any::<u32>(), any::<u16>()).prop_map(|(pid, port)| Request::Trace { pid, port }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(conn, b)| Request::Demote { conn, side: if b { Side::B } else { Side::A } }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(conn, b)| Request::PassOver { conn, side: if b { Side::B } else { Side::A } }),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(conn, b, abort)| Request::Release {
            conn,
            side: if b { Side::B } else { Side::A },
            abort
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(listener, bell)| Request::Serve { listener, bell }),
        any::<u64>().prop_map(|conn| Request::Decline { conn }),
        (any::<u64>(), prop::option::of(addr())).prop_map(|(conn, source)| Request::Use { conn, source }),
        any::<u64>().prop_map(|conn| Request::Unused { conn }),
        any::<[u32; ipcd_proto::FALLBACK_KINDS]>().prop_map(|counts| Request::Fallbacks { counts }),
        (any::<u64>(), any::<bool>(), addr(), addr(), any::<bool>()).prop_map(|(conn, b, local, peer, open)| {
            Request::Held { conn, side: if b { Side::B } else { Side::A }, local, peer, open }
        }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let (codes, reasons) = (ErrorCode::ALL, Fallback::ALL);
    prop_oneof![
        (any::<u16>(), any::<u32>(), any::<u32>(), 0u32..8, any::<u64>()).prop_map(
            |(version, monitor_pid, pid, caps, ring_bytes)| Response::Welcome {
                version,
                monitor_pid,
                pid,
                caps: Caps::from_bits_truncate(caps),
                ring_bytes
            }
        ),
        Just(Response::Ok),
        Just(Response::Relayed),
        (any::<u32>(), any::<bool>()).prop_map(|(index, shared)| Response::Queue { index, shared }),
        (any::<u64>(), any::<[u32; 2]>(), addr(), addr(), any::<u64>())
            .prop_map(|(conn, pids, a, b, segment_len)| Response::Traced { conn, pids, addrs: [a, b], segment_len }),
        prop::sample::select(codes.to_vec()).prop_map(|code| Response::Error { code }),
        info().prop_map(Response::Connected),
        prop::sample::select(reasons.to_vec()).prop_map(|reason| Response::UseKernel { reason }),
        (any::<u64>(), info(), any::<u64>()).prop_map(|(listener, info, at)| Response::Incoming { listener, info, at }),
        any::<u64>().prop_map(|conn| Response::PeerGone { conn }),
        any::<u64>().prop_map(|segment| Response::Forget { segment }),
        (addr(), info(), any::<bool>(), any::<u64>()).prop_map(|(dest, info, bell, acceptor)| Response::Standby {
            dest,
            info,
            bell,
            acceptor
        }),
        (any::<u64>(), info()).prop_map(|(listener, info)| Response::Expect { listener, info }),
        any::<u64>().prop_map(|conn| Response::Withdraw { conn }),
        any::<u64>().prop_map(|id| Response::BellId { id }),
        any::<u64>().prop_map(|id| Response::Bell { id }),
        info().prop_map(Response::Reopened),
        (any::<[u64; 11]>(), any::<[u64; ipcd_proto::FALLBACK_KINDS]>()).prop_map(|(v, fallbacks)| Response::Status(
            Status {
                monitor_pid: v[0] as u32,
                processes: v[1] as u32,
                listeners: v[2] as u32,
                connections: v[3] as u32,
                segment_bytes: v[4],
                connects_total: v[5],
                fallbacks_total: v[6],
                uptime_ms: v[7],
                reused_total: v[8],
                standby_total: v[9],
                renewed_total: v[10],
                fallbacks,
            }
        )),
        (any::<[u32; 4]>(), any::<[u64; 3]>()).prop_map(|(v, b)| Response::ProcessEntry(ProcessStatus {
            pid: v[0],
            uid: v[1],
            connections: v[2],
            listeners: v[3],
            sent: b[0],
            received: b[1],
            to_kernel: b[2]
        })),
        (any::<u32>(), addr(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
            |(pid, addr, backlog, pending, reuseport)| Response::ListenerEntry(ListenerStatus {
                pid,
                addr,
                backlog,
                pending,
                reuseport
            })
        ),
        (
            any::<u64>(),
            any::<[u32; 2]>(),
            addr(),
            addr(),
            any::<[u64; 3]>(),
            0..EndState::ALL.len(),
            0..EndState::ALL.len()
        )
            .prop_map(|(conn, pids, a, b, n, s0, s1)| {
                let states = [EndState::ALL[s0], EndState::ALL[s1]];
                Response::ConnEntry(ConnStatus {
                    conn,
                    pids,
                    addrs: [a, b],
                    bytes: [n[0], n[1]],
                    segment_len: n[2],
                    states,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(req in request(), seq in any::<u32>()) {
        let mut buf = [0u8; MAX_FRAME];
        let n = req.encode(seq, &mut buf).unwrap();
        prop_assert_eq!(Request::decode(&buf[..n], req.fd_count()), Ok((seq, req)));
        // Every shorter prefix is refused, never misread.
        for cut in 0..n {
            prop_assert!(Request::decode(&buf[..cut], req.fd_count()).is_err());
        }
        // The wrong fd count is refused.
        prop_assert_eq!(
            Request::decode(&buf[..n], req.fd_count() + 1),
            Err(DecodeError::FdCount { expected: req.fd_count(), got: req.fd_count() + 1 })
        );
        // A request is not a response.
        prop_assert!(matches!(Response::decode(&buf[..n], 0), Err(DecodeError::UnknownType(_))));
    }

    #[test]
    fn packed_requests_come_back_in_order(reqs in prop::collection::vec(request(), 1..12), cut in any::<usize>()) {
        // Requests without fds, back to back in one packet as a batch goes.
        let reqs: Vec<Request> = reqs.into_iter().filter(|r| r.fd_count() == 0).collect();
        prop_assume!(!reqs.is_empty());
        let mut packet = Vec::new();
        let mut bounds = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            let mut buf = [0u8; MAX_FRAME];
            let n = req.encode(i as u32 + 1, &mut buf).unwrap();
            packet.extend_from_slice(&buf[..n]);
            bounds.push(packet.len());
        }
        let got: Vec<_> = Request::decode_packet(&packet, 0).collect();
        let want: Vec<_> = reqs.iter().enumerate().map(|(i, r)| Ok((i as u32 + 1, *r))).collect();
        prop_assert_eq!(got, want);
        // Cut anywhere inside a frame: the whole frames before come, then
        // one error, never a misread request.
        let cut = 1 + cut % (packet.len() - 1);
        let whole = bounds.iter().filter(|&&b| b <= cut).count();
        let got: Vec<_> = Request::decode_packet(&packet[..cut], 0).collect();
        prop_assert!(got[..whole.min(got.len())].iter().all(Result::is_ok));
        if bounds.contains(&cut) {
            prop_assert_eq!(got.len(), whole);
        } else {
            prop_assert_eq!(got.len(), whole + 1);
            prop_assert!(got[whole].is_err());
        }
    }

    #[test]
    fn responses_round_trip(resp in response(), seq in any::<u32>()) {
        let mut buf = [0u8; MAX_FRAME];
        let n = resp.encode(seq, &mut buf).unwrap();
        prop_assert_eq!(Response::decode(&buf[..n], resp.fd_count()), Ok((seq, resp)));
        for cut in 0..n {
            prop_assert!(Response::decode(&buf[..cut], resp.fd_count()).is_err());
        }
        // Too small an output buffer says how much is needed.
        if n > 0 {
            prop_assert_eq!(resp.encode(seq, &mut buf[..n - 1]), Err(EncodeError::BufferTooSmall { need: n }));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128), fds in 0usize..5) {
        let _ = Request::decode(&bytes, fds);
        let _ = Response::decode(&bytes, fds);
    }

    /// Bytes after a valid header: the decoder reaches the field checks.
    #[test]
    fn arbitrary_bodies_never_panic(kind in 0x0100u16..0x0210, body in prop::collection::vec(any::<u8>(), 0..96)) {
        let mut frame = Vec::new();
        frame.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
        frame.extend_from_slice(&[CODEC_VERSION, 0]);
        frame.extend_from_slice(&kind.to_le_bytes());
        frame.extend_from_slice(&[0, 0, 7, 0, 0, 0]);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        for fds in 0..4 {
            if let Ok((seq, req)) = Request::decode(&frame, fds) {
                prop_assert_eq!(seq, 7);
                // Whatever decodes re-encodes to the same bytes.
                let mut buf = [0u8; MAX_FRAME];
                let n = req.encode(seq, &mut buf).unwrap();
                prop_assert_eq!(&buf[..n], &frame[..]);
            }
            if let Ok((seq, resp)) = Response::decode(&frame, fds) {
                let mut buf = [0u8; MAX_FRAME];
                let n = resp.encode(seq, &mut buf).unwrap();
                prop_assert_eq!(&buf[..n], &frame[..]);
            }
        }
    }
}

fn frame(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    f.extend_from_slice(&[CODEC_VERSION, 0]);
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&[0, 0, 1, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn each_malformation_has_its_error() {
    let ok = frame(0x010a, &[]);
    assert_eq!(Request::decode(&ok, 0), Ok((1, Request::Status)));

    let mut bad = ok.clone();
    bad[0] ^= 1;
    assert!(matches!(Request::decode(&bad, 0), Err(DecodeError::BadMagic(_))));

    let mut bad = ok.clone();
    bad[2] = 9;
    assert_eq!(Request::decode(&bad, 0), Err(DecodeError::UnknownVersion(9)));

    let mut bad = ok.clone();
    bad[3] = 1;
    assert_eq!(Request::decode(&bad, 0), Err(DecodeError::BadValue("reserved")));

    assert_eq!(Request::decode(&frame(0x01ff, &[]), 0), Err(DecodeError::UnknownType(0x01ff)));

    let mut bad = ok.clone();
    bad[12] = 3;
    assert_eq!(Request::decode(&bad, 0), Err(DecodeError::BadLength { declared: 3, actual: 0 }));

    assert_eq!(Request::decode(&frame(0x010a, &[0]), 0), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(Request::decode(&frame(0x0103, &[1, 2]), 0), Err(DecodeError::Truncated { at: 16, need: 8, have: 2 }));
    // Connect: address family 5 does not exist; `nonblocking` must be 0 or 1.
    assert_eq!(Request::decode(&frame(0x0104, &[5]), 0), Err(DecodeError::BadValue("address family")));
    let connect = [&[4u8, 127, 0, 0, 1, 80, 0][..], &[0], &[2]].concat();
    assert_eq!(Request::decode(&frame(0x0104, &connect), 0), Err(DecodeError::BadValue("nonblocking")));
    // Unknown capability bits are refused, not dropped.
    let hello = [1u8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80];
    assert_eq!(Request::decode(&frame(0x0101, &hello), 0), Err(DecodeError::BadValue("caps")));
    // Listen must carry exactly its listening socket.
    let listen = [&[0u8; 8][..], &[4, 127, 0, 0, 1, 80, 0], &[0; 4], &[0; 4]].concat();
    assert!(Request::decode(&frame(0x0102, &listen), 1).is_ok());
    assert_eq!(Request::decode(&frame(0x0102, &listen), 0), Err(DecodeError::FdCount { expected: 1, got: 0 }));
    // Oversized packets are refused before anything else.
    assert_eq!(Request::decode(&vec![0u8; MAX_FRAME + 1], 0), Err(DecodeError::TooLong(MAX_FRAME + 1)));
}

/// The fuzz seeds are valid messages, or a valid batch of requests (so
/// the fuzzer starts past the header checks); this fails if a codec
/// change leaves them stale.
#[test]
fn fuzz_seed_corpus_decodes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/proto_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let (fds, packet) = (usize::from(bytes[0]), &bytes[1..]);
        let batch = || {
            fds == 0
                && Request::decode_packet(packet, 0).count() > 1
                && Request::decode_packet(packet, 0).all(|r| r.is_ok())
        };
        assert!(
            Request::decode(packet, fds).is_ok() || Response::decode(packet, fds).is_ok() || batch(),
            "stale seed {bytes:?}"
        );
        seen += 1;
    }
    assert!(seen >= 8);
}
