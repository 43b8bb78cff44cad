//! One connection end driven by arbitrary events and calls under arbitrary
//! ring views: no panic, and no state the tables forbid (the invariants
//! live with the proptest that checks the same, in ipcd-proto's tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

use ipcd_proto::fuzzing::{ring_from_byte, run, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let steps: Vec<_> = rest.chunks_exact(3).map(|c| (Step::from_bytes(c[0], c[1]), ring_from_byte(c[2]))).collect();
    run(first & 1 == 1, &steps);
});
