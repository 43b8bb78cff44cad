//! Any bytes as a segment someone else initialised: `attach` accepts or
//! rejects them, and whatever it accepts can be driven without panics or
//! out-of-bounds accesses (ASan watches the region's bounds).
#![no_main]

use libfuzzer_sys::fuzz_target;

use ipcd_ring::fuzzing::Region;
use ipcd_ring::{Segment, Side};

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the region length (up to 64 KiB), the rest is
    // its content; an honest header is laid down first so the fuzzer can
    // reach past the magic check by leaving bytes alone.
    if data.len() < 2 {
        return;
    }
    let len = 1152 + usize::from(u16::from_le_bytes([data[0], data[1]])) % (64 << 10);
    let region = Region::new(len);
    let caps = [256, 512];
    if let Ok(total) = Segment::required_len(caps) {
        if total <= len {
            // SAFETY: the region is ours, aligned and large enough.
            let _ = unsafe { Segment::init(region.ptr(), len, 7, caps) };
        }
    }
    for (i, chunk) in data[2..].chunks(9).enumerate() {
        if chunk.len() < 2 {
            break;
        }
        // Chunk: one offset byte (in 8-byte words of the control area, then the data areas), then bytes to store.
        region.scribble(usize::from(chunk[0]) * 8 + (i % 2) * 4, &chunk[1..]);
    }
    // SAFETY: the region outlives the view and its handles.
    let Ok(seg) = (unsafe { Segment::attach(region.ptr(), region.len()) }) else {
        return;
    };
    for side in [Side::A, Side::B] {
        // SAFETY: the only handle of its side (ring) in this test or call.
        if let Ok((mut tx, mut rx)) = unsafe { seg.endpoint(side) } {
            let _ = tx.write(&[0x5a; 300]);
            let mut buf = [0u8; 700];
            let _ = rx.peek(3, &mut buf);
            let _ = rx.read(&mut buf);
            let _ = rx.prepare_wait();
            let _ = tx.prepare_wait(100);
            let _ = rx.at_eof();
        }
    }
});
