//! Attaching to a segment validates every header field; a hostile header is
//! an error, never a panic. Miri runs this file in CI.

mod common;

use common::{segment, Region};
use ipcd_ring::{offsets, Error, Segment, Side, SEGMENT_MAGIC, SEGMENT_VERSION};

fn attach(r: &Region) -> Result<Segment, Error> {
    attach_len(r, r.len())
}

fn attach_len(r: &Region, len: usize) -> Result<Segment, Error> {
    // SAFETY: the region is valid for `len <= r.len()` bytes and outlives the view.
    unsafe { Segment::attach(r.ptr(), len) }
}

#[test]
fn attach_sees_what_init_wrote() {
    let (r, seg) = segment([64, 256]);
    let other = attach(&r).unwrap();
    assert_eq!(other.conn_id(), 42);
    assert_eq!(other.capacity(Side::A), 64);
    assert_eq!(other.capacity(Side::B), 256);
    let mut tx = seg.producer(Side::A).unwrap();
    let mut rx = other.consumer(Side::B).unwrap();
    assert_eq!(tx.write(b"shared").unwrap().len, 6);
    let mut buf = [0u8; 6];
    assert_eq!(rx.read(&mut buf).unwrap().len, 6);
    assert_eq!(&buf, b"shared");
}

#[test]
fn init_refuses_bad_capacities_and_small_regions() {
    let r = Region::new(4096);
    for caps in [[0, 8], [8, 3], [8, (1 << 40) * 2]] {
        // SAFETY: valid region that outlives the (failed) call.
        let res = unsafe { Segment::init(r.ptr(), r.len(), 1, caps) };
        assert!(matches!(res, Err(Error::BadCapacity(_))), "{caps:?}");
    }
    // SAFETY: as above.
    let res = unsafe { Segment::init(r.ptr(), r.len(), 1, [4096, 4096]) };
    assert!(matches!(res, Err(Error::RegionTooSmall { have: 4096, .. })));
    // SAFETY: one byte past an aligned base is still inside the region.
    let res = unsafe { Segment::init(r.ptr().add(1), r.len() - 1, 1, [8, 8]) };
    assert_eq!(res.unwrap_err(), Error::Misaligned);
}

#[test]
fn attach_rejects_every_broken_header_field() {
    let (r, _seg) = segment([64, 64]);
    let ok_len = r.len();
    assert!(attach_len(&r, 100).is_err(), "shorter than the control area");
    assert!(matches!(attach_len(&r, ok_len - 1), Err(Error::RegionTooSmall { .. })));

    r.poke_u64(offsets::MAGIC, 0xdead);
    assert_eq!(attach(&r).unwrap_err(), Error::BadMagic(0xdead));
    r.poke_u64(offsets::MAGIC, SEGMENT_MAGIC);

    r.poke_u32(offsets::VERSION, SEGMENT_VERSION + 1);
    assert_eq!(attach(&r).unwrap_err(), Error::BadVersion(SEGMENT_VERSION + 1));
    r.poke_u32(offsets::VERSION, SEGMENT_VERSION);

    r.poke_u32(offsets::DATA_START, 0);
    assert_eq!(attach(&r).unwrap_err(), Error::BadLayout);
    r.poke_u32(offsets::DATA_START, 9 * 128);

    r.poke_u64(offsets::CAPACITY, 100);
    assert_eq!(attach(&r).unwrap_err(), Error::BadCapacity(100));
    r.poke_u64(offsets::CAPACITY, 1 << 20);
    assert_eq!(attach(&r).unwrap_err(), Error::BadLayout, "total length disagrees");
    r.poke_u64(offsets::TOTAL_LEN, Segment::required_len([1 << 20, 64]).unwrap() as u64);
    assert!(matches!(attach(&r), Err(Error::RegionTooSmall { .. })), "claims more than is mapped");
    r.poke_u64(offsets::CAPACITY, 64);
    r.poke_u64(offsets::TOTAL_LEN, ok_len as u64);
    assert!(attach(&r).is_ok());
}

#[test]
fn a_header_rewritten_after_attach_cannot_move_the_rings() {
    let (r, seg) = segment([8, 8]);
    let mut tx = seg.producer(Side::A).unwrap();
    r.poke_u64(offsets::CAPACITY, 1 << 30);
    r.poke_u64(offsets::MAGIC, 0);
    assert_eq!(tx.write(&[1; 100]).unwrap().len, 8, "the capacity read at attach holds");
    let mut rx = seg.consumer(Side::B).unwrap();
    assert_eq!(rx.read(&mut [0u8; 100]).unwrap().len, 8);
}

#[test]
fn attach_to_garbage_never_panics() {
    for seed in 0..64u64 {
        // A fresh region per seed, filled with plain byte writes: a peer's
        // garbage, not a sequence of differently sized atomic stores.
        let r = Region::new(8192);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut garbage = vec![0u8; 2048];
        for b in garbage.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if seed % 2 == 0 {
            garbage[offsets::MAGIC..offsets::MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
            garbage[offsets::VERSION..offsets::VERSION + 4].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        }
        // SAFETY: 2048 bytes fit in the 8192-byte region; nothing else uses it yet.
        unsafe { std::ptr::copy_nonoverlapping(garbage.as_ptr(), r.ptr().as_ptr(), garbage.len()) };
        let _ = attach(&r);
    }
}
