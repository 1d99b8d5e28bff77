//! The host side of the guest agent (`hearth-init` in the Linux guest):
//! processes with streamed stdio, detached processes, files, and the
//! restore hook (docs/AGENT.md). The wire format is the
//! `hearth-agent-protocol` crate.

mod audit;
mod client;
mod conn;
mod error;
mod process;
pub(crate) mod refresh;

use std::time::Duration;

pub use client::AgentClient;
pub use conn::Endpoint;
pub use error::AgentError;
pub use hearth_agent_protocol::{
    DirEntry, ErrorKind as GuestErrorKind, FileKind, FileStat, ProcessInfo, ProcessState, Refreshed, Started,
    DEFAULT_PORT as DEFAULT_AGENT_PORT,
};
pub use process::{Command, ExecOutput, ExitStatus, GuestMount, Process, ProcessOutput, ProcessStdin};
pub use refresh::RefreshOutcome;

use crate::vsock::VsockConnectError;

impl crate::Vm {
    /// A client for the guest agent on its default vsock port.
    pub fn agent(&self) -> Result<AgentClient, AgentError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        Ok(AgentClient::vsock(&v.uds_path, DEFAULT_AGENT_PORT)
            .reporting(audit::Reporter::new(self.run_state.clone())))
    }

    /// Runs a command in the guest through its agent and collects its
    /// output (e.g. `vm.exec(&["uname", "-a"])`).
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, AgentError> {
        self.agent()?
            .exec(&Command::new(argv.iter().map(|a| a.as_ref().as_bytes())))
    }

    /// Writes a file in the guest through its agent.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), AgentError> {
        self.agent()?.write_file(path, data, mode)
    }

    /// Reads a file from the guest through its agent.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        self.agent()?.read_file(path)
    }

    /// After a restore: waits up to `timeout` for the restore hook (the
    /// agent's reseed and clock set). `None` if the VM was not restored,
    /// has no vsock, or the hook has not finished in time.
    pub fn wait_agent_refresh(&self, timeout: Duration) -> Option<RefreshOutcome> {
        self.refresh.as_ref()?.wait(timeout)
    }
}
