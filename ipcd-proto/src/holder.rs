//! How a process is named among the holders of a connection's side in its
//! segment (`ipcd_ring::Segment::name_holder`): its process id together
//! with the pid namespace that number is valid in, so that a reader in
//! another namespace never takes the number for one of its own processes.
//! A survivor whose monitor is gone reads these names to judge whether its
//! peer died; the monitor and every holder write them.

use core::num::NonZeroU64;

/// The name of process `pid` in the pid namespace whose inode is `ns`
/// (its low 32 bits tell namespaces apart). `None` for pid 0.
pub fn holder_id(ns: u64, pid: u32) -> Option<NonZeroU64> {
    if pid == 0 {
        return None;
    }
    NonZeroU64::new((ns & 0xffff_ffff) << 32 | u64::from(pid))
}

/// The process id `id` names, when it names one in the pid namespace whose
/// inode is `ns`; `None` for a free slot or another namespace's process.
pub fn holder_pid(id: u64, ns: u64) -> Option<u32> {
    let pid = (id & 0xffff_ffff) as u32;
    (pid != 0 && id >> 32 == ns & 0xffff_ffff).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_back_only_in_its_own_namespace() {
        let id = holder_id(0x1_f000_00ab, 4242).expect("a name").get();
        assert_eq!(holder_pid(id, 0x1_f000_00ab), Some(4242));
        assert_eq!(holder_pid(id, 0xf000_00ab), Some(4242), "only the low 32 bits tell namespaces apart");
        assert_eq!(holder_pid(id, 0xf000_00ac), None);
        assert_eq!(holder_pid(0, 0), None);
        assert_eq!(holder_id(7, 0), None);
    }
}
