//! eBPF in the gateway: the embedded object (`object`), and loading,
//! attaching and map updates of the XDP guard and connection steering.
pub mod object;
