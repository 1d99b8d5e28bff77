//! The emulation-failure fallback.
//!
//! Some KVM implementations (PVM, a software virtualization this project's
//! development hosts use) emulate guest kernel code and cannot emulate a
//! few instructions, and report them as `KVM_EXIT_INTERNAL_ERROR` with an
//! emulation-failure sub-error. For instructions whose effect does not
//! matter in that situation (fences, which the emulator already orders,
//! and `fwait`, which `fpu__drop()` issues on every exec), advancing RIP is
//! exactly what the CPU would have done. Everything else stays an error.
//!
//! This is reached only on that exit, which hardware KVM does not produce
//! for these instructions, so it changes nothing there.

use kvm_bindings::{KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES};
use kvm_ioctls::VcpuFd;

/// An instruction this module steps over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Skippable {
    pub name: &'static str,
    pub len: u64,
}

/// Recognises the instructions that are safe to step over.
pub(crate) fn classify(bytes: &[u8]) -> Option<Skippable> {
    let skip = |name, len| Some(Skippable { name, len });
    match bytes {
        [0x9b, ..] => skip("fwait", 1),
        [0x0f, 0xae, 0xe8..=0xef, ..] => skip("lfence", 3),
        [0x0f, 0xae, 0xf0..=0xf7, ..] => skip("mfence", 3),
        [0x0f, 0xae, 0xf8..=0xff, ..] => skip("sfence", 3),
        _ => None,
    }
}

/// What to do after an internal-error exit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// RIP was advanced past a harmless instruction; keep running.
    Skipped(&'static str),
    /// A real failure, described.
    Fatal(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Handles `KVM_EXIT_INTERNAL_ERROR` on `vcpu`, which just returned it.
pub(crate) fn handle_internal_error(vcpu: &mut VcpuFd) -> Outcome {
    let run = vcpu.get_kvm_run();
    // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, for which the kernel
    // fills the `internal` member of the exit union.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
        let n = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..n].iter().map(|d| format!("{d:#x}")).collect();
        return Outcome::Fatal(format!(
            "KVM internal error, suberror {} (data: {})",
            internal.suberror,
            data.join(", ")
        ));
    }
    // SAFETY: for the emulation sub-error the kernel fills the
    // `emulation_failure` member, which overlays `internal`.
    let failure = unsafe { run.__bindgen_anon_1.emulation_failure };
    let has_bytes = failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
    // SAFETY: plain bytes; valid whatever the kernel wrote.
    let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
    let len = usize::from(insn.insn_size).min(insn.insn_bytes.len());
    let bytes = if has_bytes {
        &insn.insn_bytes[..len]
    } else {
        &[][..]
    };
    let regs = match vcpu.get_regs() {
        Ok(r) => r,
        Err(e) => return Outcome::Fatal(format!("emulation failure, and KVM_GET_REGS failed: {e}")),
    };
    let Some(skip) = classify(bytes) else {
        return Outcome::Fatal(format!(
            "KVM cannot emulate the instruction at rip {:#x} (bytes: {})",
            regs.rip,
            if has_bytes {
                hex(bytes)
            } else {
                "not reported".into()
            }
        ));
    };
    let mut regs = regs;
    regs.rip = regs.rip.wrapping_add(skip.len);
    match vcpu.set_regs(&regs) {
        Ok(()) => Outcome::Skipped(skip.name),
        Err(e) => Outcome::Fatal(format!(
            "cannot step over {}: KVM_SET_REGS failed: {e}",
            skip.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_only_harmless_instructions() {
        assert_eq!(classify(&[0x9b, 0xdb, 0xe3]).unwrap().name, "fwait");
        assert_eq!(
            classify(&[0x0f, 0xae, 0xe8]).unwrap(),
            Skippable {
                name: "lfence",
                len: 3
            }
        );
        assert_eq!(classify(&[0x0f, 0xae, 0xf0]).unwrap().name, "mfence");
        assert_eq!(classify(&[0x0f, 0xae, 0xf8, 0x90]).unwrap().name, "sfence");
        // xrstor (0f ae /5 with a memory operand), clac, popcnt, rdrand: not skippable.
        assert_eq!(classify(&[0x0f, 0xae, 0x2f]), None);
        assert_eq!(classify(&[0x0f, 0x01, 0xca]), None);
        assert_eq!(classify(&[0xf3, 0x0f, 0xb8, 0xc0]), None);
        assert_eq!(classify(&[0x0f, 0xc7, 0xf0]), None);
        assert_eq!(classify(&[0x0f, 0xae]), None);
        assert_eq!(classify(&[]), None);
    }
}
