//! Connection segments: a sealed memfd holding an initialised ipcd-ring
//! segment, mapped here too so the monitor can report and clean up.

use ipcd_ring::ConnSegment;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use ipcd_ring::Segment;
use memmap2::MmapMut;

/// One connection's shared memory, owned by the monitor.
pub struct SharedSegment {
    file: File,
    /// Its first page, for the connection's records: the header and ring
    /// controls are all the monitor touches, and these pages lie side by
    /// side (see `control_pages`), where each whole segment, megabytes
    /// wide, would cost a page-table page and its address space.
    _page: Option<crate::control_pages::ControlPage>,
    /// The whole of it, for a relay, which moves bytes.
    _whole: Option<MmapMut>,
    view: Segment,
}

impl std::fmt::Debug for SharedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSegment").field("conn", &self.view.conn_id()).field("len", &self.len()).finish()
    }
}

/// A sealed memfd of `len` bytes, mapped here, that `init` fills before
/// anyone else can see it. Sealed because an unsealed memfd would let a
/// peer shrink it and kill everyone mapping it with SIGBUS.
pub(crate) fn sealed_memfd(
    name: &std::ffi::CStr,
    len: usize,
    init: impl FnOnce(NonNull<u8>) -> Result<(), ipcd_ring::Error>,
) -> io::Result<(File, MmapMut)> {
    let file = memfd(name, len)?;
    // SAFETY: the memfd is ours; nobody else maps it until we send it,
    // after initialisation.
    let mut map = unsafe { MmapMut::map_mut(&file)? };
    let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| io::Error::other("null mapping"))?;
    init(base).map_err(ring_error)?;
    seal(&file)?;
    Ok((file, map))
}

/// A new memfd of `len` bytes that may be sealed.
fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<File> {
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
    // SAFETY: memfd_create returned a fresh fd that we own.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len as u64)?;
    Ok(file)
}

/// Seals `file`'s size (see [`sealed_memfd`]).
fn seal(file: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own memfd.
    cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

fn ring_error(e: ipcd_ring::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// A libc return value as an io::Result (negative: errno).
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl SharedSegment {
    /// Creates, sizes, initialises and seals a connection's segment with
    /// two rings of `ring_bytes` each, kept here through its first page
    /// alone (see `_page`): the monitor steers the connection and moves
    /// none of its bytes. Pages are allocated only when touched.
    pub fn create(conn: u64, ring_bytes: u64) -> io::Result<SharedSegment> {
        let caps = [ring_bytes, ring_bytes];
        let file = memfd(c"ipcd-conn", Segment::required_len(caps).map_err(ring_error)?)?;
        let page = crate::control_pages::ControlPage::map(file.as_fd())?;
        // SAFETY: a live shared mapping of the fresh memfd's first page,
        // nobody else's until the memfd is sent, owned with the view by
        // the returned value.
        let view = unsafe { Segment::init_control(page.as_ptr(), page.len(), conn, caps) }.map_err(ring_error)?;
        seal(&file)?;
        Ok(SharedSegment { file, _page: Some(page), _whole: None, view })
    }

    /// [`SharedSegment::create`], mapped whole: for a ring whose bytes the
    /// monitor reads (a process's request queue).
    pub fn create_whole(conn: u64, ring_bytes: u64) -> io::Result<SharedSegment> {
        let caps = [ring_bytes, ring_bytes];
        let len = Segment::required_len(caps).map_err(ring_error)?;
        let mut view = None;
        let (file, map) = sealed_memfd(c"ipcd-conn", len, |base| {
            // SAFETY: the mapping is page-aligned, `len` bytes, ours alone
            // now, and lives in the result as long as the view.
            view = Some(unsafe { Segment::init(base, len, conn, caps) }?);
            Ok(())
        })?;
        let view = view.ok_or_else(|| io::Error::other("segment not made"))?;
        Ok(SharedSegment { file, _page: None, _whole: Some(map), view })
    }

    /// A second mapping of the same segment, for a thread that outlives
    /// this record's use of it (a relay): its own memfd and mapping, so it
    /// stays valid whatever happens to this one.
    pub fn map_again(&self) -> io::Result<SharedSegment> {
        let file = self.file.try_clone()?;
        // SAFETY: the memfd is sealed against shrinking; every index read
        // through the view is validated.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| io::Error::other("null mapping"))?;
        // SAFETY: a live, page-aligned shared mapping of the whole segment,
        // owned by the returned value with the view.
        let view = unsafe { Segment::attach(base, map.len()) }
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(SharedSegment { file, _page: None, _whole: Some(map), view })
    }

    /// The memfd, to pass to the two ends.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The segment.
    pub fn view(&self) -> &Segment {
        &self.view
    }

    /// Makes the segment fresh for connection `conn` (both ends of the last
    /// one closed).
    pub fn reuse(&mut self, conn: u64) {
        self.view.reuse(conn);
    }

    /// Names the processes `pids` (the monitor's numbers: connector,
    /// acceptor) as the first holders of sides A and B, so that a survivor
    /// can judge its peer's death after this monitor is gone.
    pub fn name_holders(&self, pids: [u32; 2]) {
        let ns = pid_namespace();
        for (side, pid) in [ipcd_ring::Side::A, ipcd_ring::Side::B].into_iter().zip(pids) {
            if let Some(id) = ipcd_proto::holder::holder_id(ns, pid) {
                let _ = self.view().name_holder(side, id);
            }
        }
    }

    /// The connection is over and the segment goes to a pool: the pages a
    /// bulk connection touched are given back, so that a pooled segment
    /// does not pin megabytes it may never use again.
    pub fn trim(&self) {
        const KEEP_TOUCHED: u64 = 256 << 10;
        let touched = [ipcd_ring::Side::A, ipcd_ring::Side::B].map(|s| self.view.written(s));
        if touched.iter().any(|&w| w > KEEP_TOUCHED) {
            // Everything past the first page (the control area lives in it).
            let page = 4096;
            let len = self.len().saturating_sub(page) as libc::off_t;
            // SAFETY: fallocate on our own memfd; punching a hole keeps the
            // size (sealed) and reads back zeros, which no ring index trusts.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    page as libc::off_t,
                    len,
                )
            };
        }
    }

    /// Length in bytes of the whole segment.
    pub fn len(&self) -> usize {
        self.view.segment_len()
    }

    /// Never empty; for clippy's len/is_empty pairing.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A non-blocking, close-on-exec eventfd: one end's doorbell.
pub fn doorbell() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd creation.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: a fresh fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Rings a doorbell (a full counter, EAGAIN, is as good as rung).
pub fn ring(bell: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    let _ = unsafe { libc::write(bell.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Empties a doorbell; true if it had been rung.
pub fn take(bell: BorrowedFd<'_>) -> bool {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
    unsafe { libc::read(bell.as_raw_fd(), (&raw mut v).cast(), 8) == 8 }
}

/// The inode of this process's pid namespace (0 if unknown), which tells
/// apart the namespaces the pids in segments are valid in.
pub fn pid_namespace() -> u64 {
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
    })
}
