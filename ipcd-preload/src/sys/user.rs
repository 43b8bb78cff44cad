//! The program's memory, touched the way the kernel touches it: a bad
//! pointer gives `EFAULT`, never a crash.
//!
//! The kernel copies a call's buffers with routines whose faults its fault
//! handler recognises and turns into a short copy. We do the same: the few
//! instructions that touch the program's memory live in one stretch of
//! code ([`fixup`] knows its bounds), and the library's `SIGSEGV`/`SIGBUS`
//! relay (`signals`) asks [`fixup`] first. A fault inside the stretch
//! jumps to its end, which returns how much was left undone; any other
//! fault goes to the program's handler or kills the process as before.
//!
//! The data path itself stays a plain `memcpy` into and out of the ring:
//! before copying, the pages it will touch are probed (one byte each, a
//! load for a source, a no-op store for a destination the copy overwrites
//! anyway), which costs one probe per 4 KiB against the copy's hundreds of
//! cycles. A buffer unmapped by another thread between the probe and the
//! copy still faults; the kernel gives `EFAULT` there, we do not.
//!
//! Off x86-64 only null pointers are recognised (no fault handler there).

/// Page size for probing: probing more often than the real page size is
/// only slower, never wrong.
const PAGE: usize = 4096;

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .text.ipcd_user,\"ax\",@progbits",
    ".p2align 4",
    ".globl ipcd_user_start",
    ".hidden ipcd_user_start",
    "ipcd_user_start:",
    // ipcd_user_copy(dst, src, n) -> bytes not copied.
    ".globl ipcd_user_copy",
    ".hidden ipcd_user_copy",
    "ipcd_user_copy:",
    "    mov rcx, rdx",
    "    rep movsb",
    "    xor eax, eax",
    "    ret",
    // ipcd_user_load(p) -> 0 if the byte at p could be read, else 1.
    ".globl ipcd_user_load",
    ".hidden ipcd_user_load",
    "ipcd_user_load:",
    "    mov ecx, 1",
    "    movzx eax, byte ptr [rdi]",
    "    xor eax, eax",
    "    ret",
    // ipcd_user_store(p) -> 0 if the byte at p is writable (it is left as
    // it was), else 1.
    ".globl ipcd_user_store",
    ".hidden ipcd_user_store",
    "ipcd_user_store:",
    "    mov ecx, 1",
    "    or byte ptr [rdi], 0",
    "    xor eax, eax",
    "    ret",
    // Where a fault in the stretch above resumes: rcx holds what was left.
    ".globl ipcd_user_fixup",
    ".hidden ipcd_user_fixup",
    "ipcd_user_fixup:",
    "    mov rax, rcx",
    "    ret",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn ipcd_user_start();
    fn ipcd_user_copy(dst: *mut u8, src: *const u8, n: usize) -> usize;
    fn ipcd_user_load(p: *const u8) -> usize;
    fn ipcd_user_store(p: *mut u8) -> usize;
    fn ipcd_user_fixup();
}

/// Called by the `SIGSEGV`/`SIGBUS` relay with the signal's context: true
/// if the fault was one of ours, which then resumes at the fix-up (the
/// routine returns what it left undone).
///
/// Async-signal-safe: reads and writes one register of the context.
pub(crate) fn fixup(ctx: *mut libc::c_void) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
        let Some(uc) = (unsafe { ctx.cast::<libc::ucontext_t>().as_mut() }) else { return false };
        let rip = &mut uc.uc_mcontext.gregs[libc::REG_RIP as usize];
        let pc = *rip as usize;
        let (start, end) = (ipcd_user_start as *const () as usize, ipcd_user_fixup as *const () as usize);
        if (start..end).contains(&pc) {
            *rip = end as i64;
            return true;
        }
        false
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        false
    }
}

/// Whether the fault handler is in place (installed by `signals` from the
/// constructor); until then probes only refuse null.
static GUARDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The relay now catches faults: probes may fault.
pub(crate) fn set_guarded() {
    GUARDED.store(cfg!(target_arch = "x86_64"), std::sync::atomic::Ordering::Release);
}

/// Whether faults are caught (the relay of `SIGSEGV`/`SIGBUS` must then stay).
pub(crate) fn is_guarded() -> bool {
    guarded()
}

fn guarded() -> bool {
    GUARDED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the byte at `p` can be read.
#[inline]
fn loadable(p: *const u8) -> bool {
    if p.is_null() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if guarded() {
        // SAFETY: a fault in the routine returns 1 (see `fixup`).
        return unsafe { ipcd_user_load(p) } == 0;
    }
    true
}

/// Whether the byte at `p` can be written (left unchanged).
#[inline]
fn storable(p: *mut u8) -> bool {
    if p.is_null() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if guarded() {
        // SAFETY: a fault in the routine returns 1 (see `fixup`); the
        // store ORs in zero, so the byte keeps its value.
        return unsafe { ipcd_user_store(p) } == 0;
    }
    true
}

/// How many of the `n` bytes at `p` can be read (or with `write`, written),
/// from the start: a probe of the first byte and of each page after it.
pub(crate) fn accessible(p: *const u8, n: usize, write: bool) -> usize {
    if n == 0 {
        return 0;
    }
    let ok = |q: *const u8| if write { storable(q.cast_mut()) } else { loadable(q) };
    let start = p as usize;
    if !ok(p) {
        return 0;
    }
    // Each later page, by its first byte.
    let mut page = (start & !(PAGE - 1)).wrapping_add(PAGE);
    while page > start && page - start < n {
        if !ok(page as *const u8) {
            return page - start;
        }
        page = page.wrapping_add(PAGE);
    }
    n
}

/// Whether all `n` bytes at `p` can be read (`write`: written).
pub(crate) fn all_accessible(p: *const u8, n: usize, write: bool) -> bool {
    accessible(p, n, write) == n
}

/// Copies `n` bytes from the program's `src` to `dst`; false (and
/// perhaps part copied) if `src` faults.
///
/// # Safety
/// `dst` must be valid for `n` bytes of writes.
pub(crate) unsafe fn copy_in(dst: *mut u8, src: *const u8, n: usize) -> bool {
    // SAFETY: as the caller promises; `src` is the program's.
    unsafe { copy(dst, src, n, src) }
}

/// Copies `n` bytes from `src` to the program's `dst`; false (and perhaps
/// part copied) if `dst` faults.
///
/// # Safety
/// `src` must be valid for `n` bytes of reads.
pub(crate) unsafe fn copy_out(dst: *mut u8, src: *const u8, n: usize) -> bool {
    // SAFETY: as the caller promises; `dst` is the program's.
    unsafe { copy(dst, src, n, dst) }
}

/// [`copy_in`] and [`copy_out`]: `program` is whichever of the two
/// pointers is the program's (the other is valid for `n` bytes).
///
/// # Safety
/// The pointer that is not `program` is valid for `n` bytes.
unsafe fn copy(dst: *mut u8, src: *const u8, n: usize, program: *const u8) -> bool {
    if n == 0 {
        return true;
    }
    if program.is_null() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if guarded() {
        // SAFETY: the other pointer is valid (the caller); a fault on the
        // program's returns what was left (see `fixup`).
        return unsafe { ipcd_user_copy(dst, src, n) } == 0;
    }
    // SAFETY: unguarded: the caller's pointers as given.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
    true
}

/// Reads a `T` from the program's memory; `None` if it faults.
///
/// # Safety
/// Any bit pattern of `size_of::<T>()` bytes must be a valid `T` (plain C
/// structs and integers).
pub(crate) unsafe fn read<T: Copy>(src: *const T) -> Option<T> {
    let mut v = std::mem::MaybeUninit::<T>::uninit();
    // SAFETY: `v` is valid for its size; on success every byte is written
    // and any bit pattern is a valid `T` (the caller).
    unsafe { copy_in(v.as_mut_ptr().cast(), src.cast(), std::mem::size_of::<T>()).then(|| v.assume_init()) }
}

/// Writes `v` to the program's memory; false if it faults.
pub(crate) fn write<T: Copy>(dst: *mut T, v: T) -> bool {
    // SAFETY: `v` is a live value of its size.
    unsafe { copy_out(dst.cast(), (&raw const v).cast(), std::mem::size_of::<T>()) }
}
