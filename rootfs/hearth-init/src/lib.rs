//! hearth-init as a library: the guest agent (`agent`) and the console
//! writer it logs through, so that tests (this crate's and the host's)
//! can run the real agent. The binary (`src/main.rs`) is PID 1 of
//! Hearth's Linux guests and, with `agent --unix PATH`, runs the same
//! agent natively on a Unix socket.

pub mod agent;
pub mod console;
