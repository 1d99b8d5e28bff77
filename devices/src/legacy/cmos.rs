//! A CMOS/RTC at ports 0x70 (index) and 0x71 (data) that answers the way a
//! guest expects: the time of day from the host clock, in BCD and 24-hour
//! mode, and never "update in progress". A guest that reads 0xff here spins
//! for thousands of exits waiting for the update to finish.

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;

/// Base I/O port (index register; data is at +1).
pub const CMOS_PORT: u64 = 0x70;
/// Length of the port range.
pub const CMOS_PORT_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// 32.768 kHz time base, 1024 Hz rate; bit 7 (update in progress) clear.
const STATUS_A: u8 = 0x26;
/// 24-hour mode, BCD, no interrupts enabled.
const STATUS_B: u8 = 0x02;
/// Valid RAM and time.
const STATUS_D: u8 = 0x80;

/// A calendar time, as the RTC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcTime {
    /// Full year, e.g. 2026.
    pub year: u32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 1 = Sunday ..= 7 = Saturday.
    pub weekday: u32,
}

impl RtcTime {
    /// Converts seconds since the Unix epoch (UTC) to a calendar time.
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days (proleptic Gregorian), valid for all u64 day counts
        // we can meet here; shifted so that the era starts on 0000-03-01.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Self {
            year: year as u32,
            month: month as u32,
            day: day as u32,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            // 1970-01-01 was a Thursday (weekday 5 when Sunday is 1).
            weekday: ((days + 4) % 7 + 1) as u32,
        }
    }
}

fn bcd(v: u32) -> u8 {
    let v = v % 100;
    ((v / 10) << 4 | (v % 10)) as u8
}

/// The CMOS index register and RAM, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosSnapshot {
    /// Selected register.
    pub index: u8,
    /// The 128 bytes of RAM.
    pub ram: Vec<u8>,
}

/// Source of wall-clock time, replaceable in tests.
pub type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The CMOS device.
pub struct Cmos {
    state: Mutex<CmosState>,
    clock: Clock,
}

struct CmosState {
    index: u8,
    ram: [u8; 128],
}

impl fmt::Debug for Cmos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cmos")
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(Box::new(SystemTime::now))
    }
}

impl Cmos {
    /// Creates a CMOS that reads the time from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            state: Mutex::new(CmosState {
                index: 0,
                ram: [0; 128],
            }),
            clock,
        }
    }

    /// The index and RAM now.
    pub fn save(&self) -> CmosSnapshot {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        CmosSnapshot {
            index: st.index,
            ram: st.ram.to_vec(),
        }
    }

    /// Restores saved state; refuses RAM of the wrong size.
    pub fn restore(&self, snap: &CmosSnapshot) -> Result<(), String> {
        let ram: [u8; 128] = snap
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| format!("CMOS RAM is {} bytes, expected 128", snap.ram.len()))?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.index = snap.index & 0x7f;
        st.ram = ram;
        Ok(())
    }

    fn register(&self, state: &CmosState, index: u8) -> u8 {
        let now = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = RtcTime::from_unix(now);
        match index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd(t.year),
            REG_CENTURY => bcd(t.year / 100),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D,
            i => state.ram.get(usize::from(i)).copied().unwrap_or(0),
        }
    }
}

impl BusDevice for Cmos {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Ok(state) = self.state.lock() else { return };
        let value = match offset {
            0 => state.index,
            _ => self.register(&state, state.index),
        };
        data.fill(value);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index port is the NMI mask; ignore it.
            0 => state.index = value & 0x7f,
            _ => {
                let index = usize::from(state.index);
                // Clock and status registers are read-only here; the rest is
                // general-purpose RAM the guest may use.
                if index > usize::from(REG_STATUS_D) && index != usize::from(REG_CENTURY) {
                    if let Some(slot) = state.ram.get_mut(index) {
                        *slot = value;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn read_reg(c: &Cmos, index: u8) -> u8 {
        c.write(0, &[index]);
        let mut d = [0u8];
        c.read(1, &mut d);
        d[0]
    }

    #[test]
    fn converts_unix_time() {
        assert_eq!(
            RtcTime::from_unix(0),
            RtcTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2026-11-22 10:44:07 UTC, a Sunday.
        assert_eq!(
            RtcTime::from_unix(1_795_344_247),
            RtcTime {
                year: 2026,
                month: 11,
                day: 22,
                hour: 10,
                minute: 44,
                second: 7,
                weekday: 1
            }
        );
        // Leap day.
        let t = RtcTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn reports_time_in_bcd_and_never_updating() {
        let c = Cmos::with_clock(Box::new(|| UNIX_EPOCH + Duration::from_secs(1_795_344_247)));
        assert_eq!(read_reg(&c, REG_SECONDS), 0x07);
        assert_eq!(read_reg(&c, REG_MINUTES), 0x44);
        assert_eq!(read_reg(&c, REG_HOURS), 0x10);
        assert_eq!(read_reg(&c, REG_DAY), 0x22);
        assert_eq!(read_reg(&c, REG_MONTH), 0x11);
        assert_eq!(read_reg(&c, REG_YEAR), 0x26);
        assert_eq!(read_reg(&c, REG_CENTURY), 0x20);
        assert_eq!(read_reg(&c, REG_STATUS_A) & 0x80, 0);
        assert_eq!(read_reg(&c, REG_STATUS_B), STATUS_B);
        assert_eq!(read_reg(&c, REG_STATUS_D), STATUS_D);
        // NMI-mask bit is ignored.
        assert_eq!(read_reg(&c, 0x80 | REG_MONTH), 0x11);
    }

    #[test]
    fn snapshot_round_trip() {
        let c = Cmos::default();
        c.write(0, &[0x40]);
        c.write(1, &[0x77]);
        let snap = c.save();
        let d = Cmos::default();
        d.restore(&snap).unwrap();
        assert_eq!(read_reg(&d, 0x40), 0x77);
        assert!(d
            .restore(&CmosSnapshot {
                index: 0,
                ram: vec![0; 3]
            })
            .is_err());
    }

    #[test]
    fn ram_is_writable_but_clock_is_not() {
        let c = Cmos::default();
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        assert_eq!(read_reg(&c, 0x40), 0x5a);
        c.write(0, &[REG_STATUS_A]);
        c.write(1, &[0xff]);
        assert_eq!(read_reg(&c, REG_STATUS_A), STATUS_A);
        // Odd widths do not panic.
        c.write(1, &[]);
        let mut wide = [0u8; 4];
        c.read(1, &mut wide);
    }
}
