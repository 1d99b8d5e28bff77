//! The device-status state machine (virtio 1.2, 2.1 and 3.1.1).
//!
//! The driver walks ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK, one
//! step per write, each write keeping the bits already set. Writing 0
//! resets; FAILED may be set at any time. NEEDS_RESET belongs to the
//! device: the driver writing it back changes nothing. Anything else is
//! refused and the status stays as it was.

/// ACKNOWLEDGE: the guest found the device.
pub const ACKNOWLEDGE: u32 = 1;
/// DRIVER: the guest has a driver for it.
pub const DRIVER: u32 = 2;
/// DRIVER_OK: the driver is ready; the device goes live.
pub const DRIVER_OK: u32 = 4;
/// FEATURES_OK: feature negotiation is complete.
pub const FEATURES_OK: u32 = 8;
/// NEEDS_RESET: the device hit an error it cannot recover from.
pub const NEEDS_RESET: u32 = 64;
/// FAILED: the driver gave up on the device.
pub const FAILED: u32 = 128;

/// The legal forward steps: (status now, status requested).
const STEPS: [(u32, u32); 4] = [
    (0, ACKNOWLEDGE),
    (ACKNOWLEDGE, ACKNOWLEDGE | DRIVER),
    (ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | FEATURES_OK),
    (
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    ),
];

/// What a status write asks the transport to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Reset the device.
    Reset,
    /// Nothing changes.
    Unchanged,
    /// Set the status to this value.
    Set(u32),
    /// Set FEATURES_OK (this value) if the negotiated features are valid.
    CheckFeatures(u32),
    /// Set DRIVER_OK (this value) if the device activates.
    Activate(u32),
    /// The write is not a legal transition.
    Refused,
}

/// Decides what writing `requested` does when the status is `current`.
pub fn transition(current: u32, requested: u32) -> Transition {
    let device_bits = current & NEEDS_RESET;
    let current = current & !NEEDS_RESET;
    let requested = requested & !NEEDS_RESET;
    if requested == 0 {
        return Transition::Reset;
    }
    if requested & FAILED != 0 {
        // FAILED may be added at any point, with the bits already set.
        return if requested & !FAILED & !current == 0 {
            Transition::Set(current | FAILED | device_bits)
        } else {
            Transition::Refused
        };
    }
    if requested == current {
        return Transition::Unchanged;
    }
    if current & FAILED != 0 {
        return Transition::Refused;
    }
    match STEPS
        .iter()
        .find(|&&(from, to)| from == current && to == requested)
    {
        Some(&(_, to)) if to & DRIVER_OK != 0 => Transition::Activate(to | device_bits),
        Some(&(_, to)) if to & FEATURES_OK != 0 => Transition::CheckFeatures(to | device_bits),
        Some(&(_, to)) => Transition::Set(to | device_bits),
        None => Transition::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AD: u32 = ACKNOWLEDGE | DRIVER;
    const ADF: u32 = AD | FEATURES_OK;
    const ALL: u32 = ADF | DRIVER_OK;

    #[test]
    fn the_normal_sequence() {
        assert_eq!(transition(0, ACKNOWLEDGE), Transition::Set(ACKNOWLEDGE));
        assert_eq!(transition(ACKNOWLEDGE, AD), Transition::Set(AD));
        assert_eq!(transition(AD, ADF), Transition::CheckFeatures(ADF));
        assert_eq!(transition(ADF, ALL), Transition::Activate(ALL));
        assert_eq!(transition(ALL, ALL), Transition::Unchanged);
        assert_eq!(transition(ALL, 0), Transition::Reset);
    }

    #[test]
    fn skipping_or_dropping_steps_is_refused() {
        assert_eq!(transition(0, AD), Transition::Refused);
        assert_eq!(transition(0, DRIVER), Transition::Refused);
        assert_eq!(transition(ACKNOWLEDGE, ADF), Transition::Refused);
        assert_eq!(transition(AD, AD | DRIVER_OK), Transition::Refused);
        assert_eq!(transition(ALL, ADF), Transition::Refused);
        assert_eq!(transition(ADF, ACKNOWLEDGE), Transition::Refused);
        assert_eq!(transition(0, 0x30), Transition::Refused);
    }

    #[test]
    fn failed_and_needs_reset() {
        assert_eq!(transition(AD, AD | FAILED), Transition::Set(AD | FAILED));
        assert_eq!(transition(0, FAILED), Transition::Set(FAILED));
        // FAILED cannot be used to smuggle in other bits.
        assert_eq!(transition(ACKNOWLEDGE, ALL | FAILED), Transition::Refused);
        assert_eq!(transition(AD | FAILED, ADF | FAILED), Transition::Refused);
        // Once failed, only reset helps.
        assert_eq!(transition(AD | FAILED, 0), Transition::Reset);
        // The driver echoing NEEDS_RESET does not change it; it stays set.
        assert_eq!(
            transition(ALL | NEEDS_RESET, ALL | NEEDS_RESET),
            Transition::Unchanged
        );
        assert_eq!(
            transition(ADF | NEEDS_RESET, ALL),
            Transition::Activate(ALL | NEEDS_RESET)
        );
        assert_eq!(
            transition(ALL | NEEDS_RESET, ALL | NEEDS_RESET | FAILED),
            Transition::Set(ALL | NEEDS_RESET | FAILED)
        );
    }
}
