//! The loader's unsafe code, kept here with its invariants: mounting bpffs
//! and reading `SO_INCOMING_CPU` through a raw descriptor. (The `aya::Pod`
//! claims for the shared map types live beside the types, in
//! tollgate-ebpf-common's `aya` feature.) Everything else in `crate::ebpf`
//! is safe Rust over aya.

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where bpffs is expected; the pin path lives below it.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Whether a bpffs is mounted at `dir`, per the mount table of this process's
/// mount namespace (`ip netns exec` remounts /sys: what another namespace
/// sees does not count).
pub fn bpffs_mounted_at(mounts: &str, dir: &Path) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (_, point, fstype) = (fields.next(), fields.next(), fields.next());
        fstype == Some("bpf") && point.is_some_and(|point| Path::new(point) == dir)
    })
}

/// Mounts bpffs at `/sys/fs/bpf` unless one is there; Ok(true) when it mounted.
pub fn ensure_bpffs() -> io::Result<bool> {
    let dir = Path::new(BPFFS);
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if bpffs_mounted_at(&mounts, dir) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let fstype = c"bpf";
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call (`target` is owned above, the others are literals), and `data` may
    // be null for bpffs. mount(2) keeps no pointer after it returns.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Whether `path` is on a bpffs (pins can only be made there).
pub fn on_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|stat| stat.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

/// Whether a network interface of this name exists in the process's
/// network namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// The CPU that processed the last packets of the connected socket `fd`
/// (`SO_INCOMING_CPU`), or None when the kernel does not say.
///
/// # Safety
/// `fd` must be an open socket for the duration of the call, owned by
/// something that does not close it meanwhile (the caller's connection).
pub unsafe fn incoming_cpu(fd: RawFd) -> Option<u32> {
    // SAFETY: the caller guarantees `fd` stays open for this call; the
    // borrow does not outlive it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let cpu = socket2::SockRef::from(&fd).cpu_affinity().ok()?;
    // The kernel reports -1 (as usize: huge) before any packet was seen.
    u32::try_from(cpu)
        .ok()
        .filter(|&cpu| cpu < tollgate_ebpf_common::MAX_CPUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_only_at_the_exact_mount_point() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n";
        assert!(bpffs_mounted_at(mounts, Path::new("/sys/fs/bpf")));
        assert!(!bpffs_mounted_at(mounts, Path::new("/sys/fs")));
        let elsewhere = "none /tmp/bpf bpf rw 0 0\ntmpfs /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(
            !bpffs_mounted_at(elsewhere, Path::new("/sys/fs/bpf")),
            "a tmpfs at the path is not bpffs"
        );
    }
}
