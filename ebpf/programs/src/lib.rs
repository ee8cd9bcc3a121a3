//! Frame access for the XDP programs: the one place that turns packet offsets
//! into pointers. Every read and write of packet bytes goes through
//! [`Frame::span`], which checks the bytes lie inside the frame first: the
//! verifier rejects any packet access it cannot prove in bounds, and a program
//! must never read past `data_end` whatever the packet says about itself.
#![no_std]

/// The bytes of one XDP frame, `[start, end)` as the kernel gives them in
/// `xdp_md` (`data`, `data_end`).
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    /// The frame between `data` and `data_end` of the running program's context.
    #[inline(always)]
    pub fn new(data: usize, data_end: usize) -> Frame {
        Frame {
            start: data,
            end: data_end,
        }
    }

    /// The address of `len` bytes at `offset`, or `None` when the frame ends
    /// before them.
    ///
    /// Invariant: a returned address `p` satisfies `start <= p` and
    /// `p + len <= end`, and the kernel keeps `[start, end)` readable and
    /// writable for the whole run of the program. The comparison is made on
    /// the final pointer (`start + offset + len` against `end`) because that
    /// is the form the verifier follows; it needs it before every access.
    #[inline(always)]
    fn span(&self, offset: usize, len: usize) -> Option<usize> {
        let at = self.start + offset;
        if at + len > self.end {
            return None;
        }
        Some(at)
    }

    /// Whether `len` bytes at `offset` are inside the frame.
    #[inline(always)]
    pub fn has(&self, offset: usize, len: usize) -> bool {
        self.span(offset, len).is_some()
    }

    /// A copy of the `N` bytes at `offset`, or `None` when the frame is shorter.
    #[inline(always)]
    pub fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let at = self.span(offset, N)?;
        // SAFETY: `span` returned `at` only if `[at, at + N)` lies inside the
        // frame, which the kernel keeps mapped while the program runs; `[u8; N]`
        // has alignment 1, so any address is a valid place to read it from.
        Some(unsafe { core::ptr::read(at as *const [u8; N]) })
    }

    /// Overwrites the `N` bytes at `offset`; `None` (and nothing written) when
    /// the frame is shorter.
    #[inline(always)]
    pub fn write<const N: usize>(&self, offset: usize, bytes: [u8; N]) -> Option<()> {
        let at = self.span(offset, N)?;
        // SAFETY: as in `read`; XDP frames are writable by the program.
        unsafe { core::ptr::write(at as *mut [u8; N], bytes) };
        Some(())
    }
}

/// A big-endian (network order) `u16` from two packet bytes.
#[inline(always)]
pub fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}
