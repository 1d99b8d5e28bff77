//! GDT descriptors and the KVM segment registers they describe.

use kvm_bindings::kvm_segment;

/// Encodes a GDT entry from access/flags bits (as in Linux's GDT_ENTRY),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With the granularity bit, the limit counts 4 KiB pages.
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The segment register state KVM expects for GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(bit(47) == 0),
    }
}

/// 64-bit code, read/execute.
pub const CODE64: u16 = 0xa09b;
/// 32-bit code, read/execute.
pub const CODE32: u16 = 0xc09b;
/// Flat data, read/write.
pub const DATA: u16 = 0xc093;
/// 64-bit TSS (busy).
pub const TSS64: u16 = 0x808b;
/// 32-bit TSS (busy).
pub const TSS32: u16 = 0x008b;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_flat_segments() {
        let code = gdt_entry(CODE64, 0, 0xfffff);
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let seg = segment_from_gdt(code, 2);
        assert_eq!(seg.selector, 0x10);
        assert_eq!(
            (seg.l, seg.db, seg.g, seg.present, seg.s, seg.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);

        let data = segment_from_gdt(gdt_entry(DATA, 0, 0xfffff), 3);
        assert_eq!((data.selector, data.db, data.type_, data.l), (0x18, 1, 3, 0));

        let tss = segment_from_gdt(gdt_entry(TSS32, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.g, tss.s, tss.type_), (0x67, 0, 0, 0xb));

        let with_base = segment_from_gdt(gdt_entry(DATA, 0x1234_5678, 0xff), 1);
        assert_eq!(with_base.base, 0x1234_5678);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
