//! Pseudo-terminals for SPAWN with `tty`: the master stays with the agent
//! (output, input, RESIZE), the slave becomes the child's fds 0-2 and
//! controlling terminal. Needs devpts on /dev/pts (PID 1 mounts it) and
//! /dev/ptmx.

use std::io;

use hearth_agent_protocol::WinSize;

use super::fd::{self, Fd};

/// The ptmx device.
const PTMX: &[u8] = b"/dev/ptmx";
/// The terminal EOF character when the terminal has none (^D).
const DEFAULT_EOF: u8 = 0x04;

/// An open pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The agent's side, non-blocking.
    pub master: Fd,
    /// The child's side.
    pub slave: Fd,
}

/// Opens a pair with the window size `size`: posix_openpt, unlockpt
/// (grantpt is a no-op with devpts), then the slave through TIOCGPTPEER
/// (no path lookup) or, on kernels before 4.13, /dev/pts/<n>.
pub fn open(size: WinSize) -> io::Result<Pty> {
    let master = fd::open(PTMX, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK, 0)?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int through the pointer, valid here.
    fd::check(unsafe { libc::ioctl(master.raw(), libc::TIOCSPTLCK, &unlock) })?;
    resize(&master, size)?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags by value; no memory.
    let peer = unsafe { libc::ioctl(master.raw(), libc::TIOCGPTPEER, flags) };
    let slave = match Fd::from_new(peer) {
        Ok(slave) => slave,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOTTY) => {
            let mut n: libc::c_uint = 0;
            // SAFETY: TIOCGPTN writes an unsigned int through the pointer.
            fd::check(unsafe { libc::ioctl(master.raw(), libc::TIOCGPTN, &mut n) })?;
            fd::open(
                format!("/dev/pts/{n}").as_bytes(),
                libc::O_RDWR | libc::O_NOCTTY,
                0,
            )?
        }
        Err(e) => return Err(e),
    };
    Ok(Pty { master, slave })
}

/// TIOCSWINSZ on the master: the child's terminal gets the new size (and
/// its foreground process group SIGWINCH).
pub fn resize(master: &Fd, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize through the pointer, valid here.
    fd::check(unsafe { libc::ioctl(master.raw(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// The terminal's EOF character (VEOF), which STDIN_CLOSE writes: in
/// canonical mode it ends the reader's input. ^D if it cannot be read or
/// is disabled.
pub fn eof_char(master: &Fd) -> u8 {
    // SAFETY: `termios` is plain old data; all-zero bytes are valid.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills `t`, a valid writable termios; on a master
    // it reports the slave's settings.
    if unsafe { libc::tcgetattr(master.raw(), &mut t) } != 0 {
        return DEFAULT_EOF;
    }
    match t.c_cc.get(libc::VEOF) {
        Some(&c) if c != 0 => c,
        _ => DEFAULT_EOF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_carries_bytes_and_a_size() {
        let pty = open(WinSize { rows: 33, cols: 101 }).unwrap();
        // SAFETY: winsize is plain old data.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let size = |ws: &mut libc::winsize| {
            // SAFETY: TIOCGWINSZ fills a winsize, valid here.
            let rc = unsafe { libc::ioctl(pty.slave.raw(), libc::TIOCGWINSZ, ws) };
            assert_eq!(rc, 0);
        };
        size(&mut ws);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        resize(&pty.master, WinSize { rows: 5, cols: 7 }).unwrap();
        size(&mut ws);
        assert_eq!((ws.ws_row, ws.ws_col), (5, 7));
        assert_eq!(eof_char(&pty.master), 0x04);
        pty.slave.write_all(b"x").unwrap();
        let mut buf = [0u8; 8];
        // The byte may take a moment to cross the terminal.
        let mut n = 0;
        for _ in 0..100 {
            match pty.master.read(&mut buf) {
                Ok(got) => {
                    n = got;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        assert_eq!(&buf[..n], b"x");
    }
}
