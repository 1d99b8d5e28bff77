//! What can go wrong talking to the guest agent.

use std::io;

use hearth_agent_protocol::ErrorKind;

use crate::vsock::VsockConnectError;

/// Errors talking to the guest agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The agent cannot be reached: the VM has no vsock device, nothing
    /// listens on the agent's port (a guest without the agent), or the
    /// socket is gone.
    #[error("cannot reach the guest agent: {0}")]
    Connect(#[from] VsockConnectError),
    /// The agent speaks a protocol version this host does not.
    #[error("the guest agent speaks protocol version {agent}; this host speaks {host}: {message}")]
    Version {
        /// The agent's version (1 for the old one-request agent).
        agent: u32,
        /// This host's.
        host: u32,
        /// What the agent said.
        message: String,
    },
    /// The connection closed before the exchange ended (the agent died,
    /// or the VM stopped).
    #[error("the guest agent closed the connection before answering")]
    Disconnected,
    /// Reading or writing the connection failed.
    #[error("guest agent connection: {0}")]
    Io(#[from] io::Error),
    /// The agent stayed silent longer than the client's timeout.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The guest refused the request; the message names what failed and
    /// why (`open /no/such: No such file or directory`).
    #[error("guest: {message}")]
    Guest {
        /// The kind of failure.
        kind: ErrorKind,
        /// The guest's errno, or 0.
        errno: i32,
        /// What the guest said.
        message: String,
    },
    /// The agent sent something that is not the protocol (the guest is
    /// not trusted: this ends the exchange, nothing else).
    #[error("the guest agent broke the protocol: {0}")]
    Protocol(String),
    /// A command's output passed the client's cap (`exec` collects output
    /// in memory; stream it with `spawn` instead).
    #[error("the command's output passed {0} bytes")]
    OutputTooLarge(usize),
}

impl AgentError {
    /// Whether the guest said the path or program does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Guest {
                kind: ErrorKind::NotFound,
                ..
            }
        )
    }
}
