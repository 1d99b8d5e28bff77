//! The VMM's boot timer: writing one magic byte to I/O port 0x440 marks
//! the moment user space is up.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;

/// The I/O port the VMM listens on (the offset into /dev/port).
pub const PORT: u64 = 0x440;
/// The byte the VMM expects.
pub const MAGIC: u8 = 123;

/// Writes [`MAGIC`] to [`PORT`] through /dev/port.
pub fn signal() -> io::Result<()> {
    let port = OpenOptions::new().write(true).open("/dev/port")?;
    port.write_at(&[MAGIC], PORT)?;
    Ok(())
}
