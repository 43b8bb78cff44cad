//! Arbitrary packets into both decoders: no panic, and whatever decodes
//! re-encodes to exactly the same bytes and decodes again to the same value
//! (decode→encode→decode is stable; the codec has one spelling per message).
//! A packet of requests read as a batch is whole frames back to back: the
//! requests it yields re-encode to its bytes, in order, up to any error.
#![no_main]

use ipcd_proto::message::{Request, Response, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, packet)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds % 5);
    let mut buf = [0u8; MAX_FRAME];
    if let Ok((seq, req)) = Request::decode(packet, fds) {
        let n = req.encode(seq, &mut buf).expect("a decoded request re-encodes");
        assert_eq!(&buf[..n], packet);
        assert_eq!(Request::decode(&buf[..n], fds), Ok((seq, req)));
    }
    let mut at = 0;
    for r in Request::decode_packet(packet, fds) {
        let Ok((seq, req)) = r else { break };
        let n = req.encode(seq, &mut buf).expect("a decoded request re-encodes");
        assert_eq!(&buf[..n], &packet[at..at + n], "a batch's requests are its bytes");
        at += n;
    }
    if let Ok((seq, resp)) = Response::decode(packet, fds) {
        let n = resp.encode(seq, &mut buf).expect("a decoded response re-encodes");
        assert_eq!(&buf[..n], packet);
        assert_eq!(Response::decode(&buf[..n], fds), Ok((seq, resp)));
    }
});
