//! virtio-vsock protocol constants (virtio 1.2, 5.10).

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type supported.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Accept.
    pub const RESPONSE: u16 = 2;
    /// Reset / refuse.
    pub const RST: u16 = 3;
    /// Half or full close.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Here is my credit.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Tell me your credit.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Event id: the transport was reset (e.g. after a snapshot restore).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Largest payload accepted in one guest packet.
pub const MAX_PKT_DATA: u32 = 64 << 10;
/// The receive buffer the device advertises per connection (buf_alloc) by
/// default: the most a guest may have in flight to a host socket, and so
/// the most the device buffers for it. A credit update goes out once a
/// quarter of it was forwarded.
pub const DEFAULT_CONN_BUFFER: u32 = 128 << 10;
/// Live connections per device by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Host ports handed out for host-initiated connections start here.
pub const LOCAL_PORT_BASE: u32 = 1 << 30;

/// A packet header as the device sees it (host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}
