//! The host side of the guest agent (see the `hearth-agent-protocol`
//! crate): run commands and move files in a Linux guest whose init runs
//! the agent, over vsock.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use hearth_agent_protocol::{read_response, write_frame, Request, Response};
pub use hearth_agent_protocol::{Exec, DEFAULT_PORT as DEFAULT_AGENT_PORT};

use crate::vsock::{self, VsockConnectError};

/// What a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
    /// Exit code, or minus the signal that killed it.
    pub status: i32,
}

impl ExecOutput {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The vsock connection could not be made (no agent listening, no vsock).
    #[error("cannot reach the guest agent: {0}")]
    Connect(#[from] VsockConnectError),
    /// The connection failed midway.
    #[error("guest agent connection: {0}")]
    Io(#[from] io::Error),
    /// The agent refused the request; the text says why (e.g. the program
    /// does not exist).
    #[error("guest agent: {0}")]
    Guest(String),
    /// The agent closed the connection before answering (it crashed or was
    /// killed).
    #[error("the guest agent closed the connection before answering")]
    Closed,
    /// The agent answered something that does not fit the request.
    #[error("unexpected answer from the guest agent: {0}")]
    Unexpected(String),
}

/// A client for the agent on one guest port.
#[derive(Clone, Debug)]
pub struct AgentClient {
    uds_path: PathBuf,
    port: u32,
    timeout: Option<Duration>,
}

impl AgentClient {
    /// A client for the agent on `port`, through the VM socket `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        Self {
            uds_path: uds_path.into(),
            port,
            timeout: Some(Duration::from_secs(600)),
        }
    }

    /// Gives up when the agent is silent for this long (`None`: never).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    fn request(&self, req: &Request) -> Result<std::os::unix::net::UnixStream, AgentError> {
        let mut stream = vsock::connect(&self.uds_path, self.port)?;
        stream.set_read_timeout(self.timeout)?;
        write_frame(&mut stream, &req.encode())?;
        Ok(stream)
    }

    fn next(stream: &mut std::os::unix::net::UnixStream) -> Result<Response, AgentError> {
        match read_response(stream) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(AgentError::Closed),
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionReset || e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                Err(AgentError::Closed)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a command and collects its output.
    pub fn exec(&self, exec: &Exec) -> Result<ExecOutput, AgentError> {
        let mut stream = self.request(&Request::Exec(exec.clone()))?;
        let mut out = ExecOutput::default();
        loop {
            match Self::next(&mut stream)? {
                Response::Stdout(b) => out.stdout.extend_from_slice(&b),
                Response::Stderr(b) => out.stderr.extend_from_slice(&b),
                Response::Exit(status) => {
                    out.status = status;
                    return Ok(out);
                }
                Response::Error(msg) => return Err(AgentError::Guest(msg)),
                other => return Err(AgentError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Creates or replaces `path` in the guest.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), AgentError> {
        let mut stream = self.request(&Request::WriteFile {
            path: path.as_bytes().to_vec(),
            mode,
            data: data.to_vec(),
        })?;
        match Self::next(&mut stream)? {
            Response::Ok => Ok(()),
            Response::Error(msg) => Err(AgentError::Guest(msg)),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads `path` from the guest.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let mut stream = self.request(&Request::ReadFile {
            path: path.as_bytes().to_vec(),
        })?;
        match Self::next(&mut stream)? {
            Response::Data(d) => Ok(d),
            Response::Error(msg) => Err(AgentError::Guest(msg)),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }
}

impl crate::Vm {
    /// A client for the guest agent on its default vsock port.
    pub fn agent(&self) -> Result<AgentClient, VsockConnectError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        Ok(AgentClient::new(&v.uds_path, DEFAULT_AGENT_PORT))
    }

    /// Runs a command in the guest through its agent (e.g.
    /// `vm.exec(&["uname", "-a"])`).
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, AgentError> {
        self.agent()?.exec(&command(argv))
    }

    /// Writes a file in the guest through its agent.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), AgentError> {
        self.agent()?.write_file(path, data, mode)
    }

    /// Reads a file from the guest through its agent.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        self.agent()?.read_file(path)
    }
}

/// Builds an [`Exec`] from string arguments.
pub fn command<S: AsRef<str>>(argv: &[S]) -> Exec {
    Exec {
        argv: argv.iter().map(|a| a.as_ref().as_bytes().to_vec()).collect(),
        ..Exec::default()
    }
}
