//! Legacy PC devices: the 16550A serial port, the i8042 reset line, the
//! CMOS real-time clock, and Hearth's boot-timer and VM generation ports.

pub mod boot_timer;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod vm_generation;

pub use boot_timer::{BootTime, BootTimer, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use cmos::Cmos;
pub use cmos::CmosSnapshot;
pub use i8042::I8042;
pub use serial::{SerialDevice, SerialInput, SerialSnapshot};
pub use vm_generation::{Generation, VmGeneration, VM_GENERATION_LEN, VM_GENERATION_PORT};
