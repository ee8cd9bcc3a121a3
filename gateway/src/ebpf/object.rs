//! The compiled eBPF object embedded in the `tollgate` binary: programs
//! `tollgate_guard` (XDP) and `tollgate_steer` (SK_REUSEPORT) and their maps,
//! built from `ebpf/programs` by `build.rs`. Names and layouts are in
//! `tollgate-ebpf-common`. tests/tests/ebpf_packets.rs checks it against the
//! kernel: every map, the pinned ones, the verifier, native and generic attach.

/// The ELF object for `aya::EbpfLoader::load`, 8-byte aligned as aya requires.
pub fn guard_object() -> &'static [u8] {
    // Inside a function, not a static: the macro's aligned wrapper is a local
    // type, and the bytes stay in .rodata either way.
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-ebpf.o"))
}
