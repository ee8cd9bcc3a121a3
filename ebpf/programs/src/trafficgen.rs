//! Traffic generator for the benches and tests (never embedded in the
//! gateway): XDP programs run with BPF_PROG_TEST_RUN and
//! BPF_F_TEST_XDP_LIVE_FRAMES on the client's veth, so every run sends the
//! frame out of the interface at kernel speed.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, helpers::bpf_get_prandom_u32, macros::xdp, programs::XdpContext};
use tollgate_ebpf::{be16, Frame};

/// Offsets in an Ethernet + IPv4 (no options) + TCP frame.
const TCP_SOURCE_PORT_AT: usize = 14 + 20;
const TCP_CHECKSUM_AT: usize = TCP_SOURCE_PORT_AT + 16;
/// Source ports the SYN flood cycles through (the unprivileged range).
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 65536 - FIRST_PORT;

/// Sends the frame out unchanged.
#[xdp]
pub fn trafficgen_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Sends the SYN out from a new random source port, so each one looks like a
/// new connection, with the TCP checksum kept valid. Live frames are reused
/// between runs, so the update starts from whatever port the frame holds now.
#[xdp]
pub fn trafficgen_syn(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let (Some(old_port), Some(checksum)) = (frame.read::<2>(TCP_SOURCE_PORT_AT), frame.read::<2>(TCP_CHECKSUM_AT))
    else {
        // Not the frame this program is made for: the test run reports the abort.
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the helper has no arguments.
    let new_port = (FIRST_PORT + unsafe { bpf_get_prandom_u32() } % PORTS) as u16;
    let checksum = checksum_update(be16(checksum), be16(old_port), new_port);
    if frame.write(TCP_SOURCE_PORT_AT, new_port.to_be_bytes()).is_none()
        || frame.write(TCP_CHECKSUM_AT, checksum.to_be_bytes()).is_none()
    {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changes from `old` to
/// `new`, HC' = ~(~HC + ~m + m'), in one's complement arithmetic.
fn checksum_update(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that can loop forever.
    loop {}
}
