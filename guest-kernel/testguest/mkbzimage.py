#!/usr/bin/env python3
"""Wrap the test guest's flat image in a minimal Linux bzImage.

    mkbzimage.py testguest.elf testguest.bin testguest.bzImage

Layout (Documentation/x86/boot.rst):
  0x000-0x3ff  boot sector + 1 setup sector (setup_sects = 1) holding the
               setup header at 0x1f1. The real-mode code (jump target at
               0x26c) only halts: a VMM using the 64-bit boot protocol never
               runs it.
  0x400-...    protected-mode payload = objcopy -O binary of the ELF, loaded
               at code32_start = 0x100000; the 64-bit entry is payload+0x200
               (entry64 in src/entry.S), kernel_info at payload+0.
  last 4 bytes CRC-32 of everything before (boot protocol 2.08+).
"""
import struct
import sys
import zlib

LOAD_ADDR = 0x100000
ENTRY64_OFFSET = 0x200
SETUP_SECTS = 1
SETUP_SIZE = (SETUP_SECTS + 1) * 512
HEADER_END = 0x26C  # end of the 2.15 setup header (kernel_info_offset + 4)

LOADED_HIGH = 1 << 0
XLF_KERNEL_64 = 1 << 0


def elf_info(path):
    """Return (e_entry, lowest paddr, highest paddr+memsz) of PT_LOADs."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit(f"{path}: not a little-endian ELF64 file")
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 0x18)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    lo, hi = None, None
    for i in range(e_phnum):
        p_type, _flags, _off, _vaddr, p_paddr, _filesz, p_memsz, _align = \
            struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type != 1:  # PT_LOAD
            continue
        lo = p_paddr if lo is None else min(lo, p_paddr)
        hi = p_paddr + p_memsz if hi is None else max(hi, p_paddr + p_memsz)
    if lo is None:
        sys.exit(f"{path}: no PT_LOAD segment")
    return e_entry, lo, hi


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    elf_path, bin_path, out_path = sys.argv[1:]
    entry, lo, hi = elf_info(elf_path)
    if lo != LOAD_ADDR:
        sys.exit(f"{elf_path}: image must start at {LOAD_ADDR:#x}, not {lo:#x}")
    if entry != LOAD_ADDR + ENTRY64_OFFSET:
        sys.exit(f"{elf_path}: e_entry {entry:#x} is not load address + 0x200")

    payload = bytearray(open(bin_path, "rb").read())
    if payload[:4] != b"LToP":
        sys.exit(f"{bin_path}: no kernel_info at offset 0")
    # Pad so that payload + CRC is a whole number of 16-byte paragraphs.
    payload += b"\0" * ((-(len(payload) + 4)) % 16)
    syssize = (len(payload) + 4) // 16
    init_size = (hi - LOAD_ADDR + 0xFFF) & ~0xFFF

    setup = bytearray(SETUP_SIZE)

    def put(fmt, off, *vals):
        struct.pack_into("<" + fmt, setup, off, *vals)

    put("B", 0x1F1, SETUP_SECTS)          # setup_sects
    put("H", 0x1F2, 0)                    # root_flags
    put("I", 0x1F4, syssize)              # syssize (16-byte units)
    put("H", 0x1FA, 0xFFFF)               # vid_mode: "normal"
    put("H", 0x1FE, 0xAA55)               # boot_flag
    put("BB", 0x200, 0xEB, HEADER_END - 0x202)  # jump: short jmp past header
    setup[0x202:0x206] = b"HdrS"          # header
    put("H", 0x206, 0x020F)               # version 2.15
    put("B", 0x211, LOADED_HIGH)          # loadflags
    put("I", 0x214, LOAD_ADDR)            # code32_start
    put("I", 0x22C, 0x7FFFFFFF)           # initrd_addr_max
    put("I", 0x230, 0x200000)             # kernel_alignment
    put("B", 0x234, 0)                    # relocatable_kernel: no
    put("B", 0x235, 21)                   # min_alignment: 2 MiB (log2)
    put("H", 0x236, XLF_KERNEL_64)        # xloadflags
    put("I", 0x238, 0x7FF)                # cmdline_size
    put("Q", 0x258, LOAD_ADDR)            # pref_address
    put("I", 0x260, init_size)            # init_size
    put("I", 0x268, 0)                    # kernel_info_offset (payload + 0)
    # Real-mode code at the jump target: cli; hlt; jmp .-1
    setup[HEADER_END:HEADER_END + 4] = bytes([0xFA, 0xF4, 0xEB, 0xFD])

    image = bytes(setup) + bytes(payload)
    # CRC as Linux's arch/x86/boot/tools/build.c: CRC-32, init ~0, no final xor.
    crc = zlib.crc32(image) ^ 0xFFFFFFFF
    image += struct.pack("<I", crc)
    with open(out_path, "wb") as f:
        f.write(image)


if __name__ == "__main__":
    main()
