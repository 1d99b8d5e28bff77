#!/usr/bin/env python3
"""Run the test guest's scenarios under QEMU TCG and check the serial output.

    run-qemu.py [--out build] [--qemu qemu-system-x86_64] [-k FILTER]

Two boot paths:
  pvh      QEMU boots build/testguest.elf through its Xen PVH note.
  linux64  QEMU boots build/tests/shim64.elf (PVH), which sets up the Linux
           64-bit boot protocol state and jumps to the bzImage payload
           (loaded at 0x100000 with -device loader) at 0x100200.

blk runs on QEMU's microvm machine (virtio-mmio, modern, plus an i8042 for
the reset) against QEMU's own virtio-blk.

SeaBIOS lists one MP-table processor entry per socket, so SMP runs use
-smp N,sockets=N. Ends with the line "N passed, N failed".

--accel kvm runs the same checks on /dev/kvm (on PVM hosts every guest
CPL0 instruction, SeaBIOS included, is emulated: ~4 s per boot).
"""
import argparse
import os
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import insncount  # noqa: E402

QEMU_BASE = ["-M", "pc", "-m", "128", "-display", "none",
             "-monitor", "none", "-serial", "stdio", "-no-reboot"]
ACCEL = {
    # accel: (QEMU arguments, seconds added to every run for firmware boot)
    "tcg": (["-accel", "tcg", "-cpu", "max"], 0),
    "kvm": (["-accel", "kvm", "-cpu", "host,-arch-capabilities"], 8),
}


class Runner:
    def __init__(self, args):
        self.out = args.out
        self.qemu = args.qemu
        self.filter = args.k
        self.accel_args, self.boot_s = ACCEL[args.accel]
        self.passed = 0
        self.failed = 0
        self.elf = os.path.join(self.out, "testguest.elf")
        self.bz = os.path.join(self.out, "testguest.bzImage")
        self.shim = os.path.join(self.out, "tests", "shim64.elf")
        self.payload = os.path.join(self.out, "tests", "payload.bin")
        for f in (self.elf, self.bz, self.shim):
            if not os.path.exists(f):
                sys.exit(f"{f} is missing: run `make check O={self.out}`")
        self.extract_payload()

    def extract_payload(self):
        data = open(self.bz, "rb").read()
        setup = (data[0x1F1] + 1) * 512
        with open(self.payload, "wb") as f:
            f.write(data[setup:])

    def symbol(self, name):
        out = subprocess.check_output(["nm", self.elf], text=True)
        for line in out.splitlines():
            f = line.split()
            if len(f) == 3 and f[2] == name:
                return int(f[0], 16)
        raise KeyError(name)

    def boot_args(self, path):
        if path == "pvh":
            return ["-kernel", self.elf]
        return ["-kernel", self.shim, "-device",
                f"loader,file={self.payload},addr=0x100000,force-raw=on"]

    def trace_insns(self, path, cmdline):
        """Instructions executed from the entry point to the reset (TCG,
        one instruction per TB, trace limited to the guest image)."""
        start = self.symbol("pvh_entry" if path == "pvh" else "entry64")
        with tempfile.NamedTemporaryFile(suffix=".trace") as log:
            base = [self.qemu] + QEMU_BASE + ["-cpu", "max", "-smp", "1"] + \
                self.boot_args(path) + ["-append", cmdline, "-d",
                                        "exec,nochain", "-dfilter",
                                        "0x100000..0x110000", "-D", log.name]
            # QEMU >= 8.1: one-insn-per-tb; older: -singlestep.
            for extra in (["-accel", "tcg,one-insn-per-tb=on"],
                          ["-accel", "tcg", "-singlestep"]):
                p = subprocess.run(base + extra, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=60)
                if p.returncode == 0:
                    break
            else:
                raise RuntimeError(f"qemu failed: {p.stderr!r}")
            return insncount.count(log.name, start)

    def run(self, path, cmdline, smp=1, timeout=20, expect_timeout=False):
        """Returns (guest serial output, qemu log, elapsed seconds)."""
        boot = self.boot_args(path)
        smp_arg = f"{smp},sockets={smp},cores=1,threads=1"
        with tempfile.NamedTemporaryFile(suffix=".log") as log:
            cmd = [self.qemu] + QEMU_BASE + self.accel_args + \
                ["-smp", smp_arg] + boot + \
                ["-append", cmdline, "-d", "cpu_reset", "-D", log.name]
            timeout += self.boot_s
            t0 = time.monotonic()
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=timeout)
                out = p.stdout
                if expect_timeout:
                    raise RuntimeError(f"qemu exited early (rc={p.returncode})")
                if p.returncode != 0:
                    raise RuntimeError(f"qemu rc={p.returncode}: {out!r} "
                                       f"{p.stderr!r}")
            except subprocess.TimeoutExpired as e:
                out = e.stdout or b""
                if not expect_timeout:
                    raise RuntimeError(f"timeout; output {out!r}")
            elapsed = time.monotonic() - t0
            qlog = open(log.name, errors="replace").read()
        text = out.decode(errors="replace")
        # Drop the firmware's chatter (SeaBIOS/iPXE) before the guest runs.
        marker = "Booting from ROM.."
        if marker in text:
            text = text[text.rindex(marker) + len(marker):]
        return text, qlog, elapsed

    def check(self, name, fn):
        if self.filter and self.filter not in name:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report any failure
            self.failed += 1
            print(f"FAIL {name}: {e}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def expect_exact(r, path, cmdline, want, smp=1):
    def fn():
        text, qlog, _ = r.run(path, cmdline, smp=smp)
        if text != want:
            raise AssertionError(f"got {text!r}, want {want!r}")
        if "Triple fault" in qlog:
            raise AssertionError("unexpected triple fault")
    return fn


def expect_fault(r, path):
    def fn():
        text, qlog, _ = r.run(path, "console=ttyS0 tg.scenario=fault")
        if text != "FAULT-NOW\n":
            raise AssertionError(f"got {text!r}")
        # TCG logs the triple fault; with KVM the VM just resets.
        if r.accel_args[1] == "tcg" and "Triple fault" not in qlog:
            raise AssertionError("no triple fault in the QEMU log")
    return fn


def expect_counter(r, path, period_ms, run_s, lo):
    """At least lo ticks, and no more than run_s allows (+2 for slack)."""
    def fn():
        hi = (run_s + r.boot_s) * 1000 // (period_ms or 50) + 2
        cmdline = "console=ttyS0 tg.scenario=counter"
        if period_ms is not None:
            cmdline += f" tg.period_ms={period_ms}"
        text, _, _ = r.run(path, cmdline, timeout=run_s, expect_timeout=True)
        lines = text.split("\n")
        if lines[0] != "GUEST-READY":
            raise AssertionError(f"first line {lines[0]!r}")
        counts = [ln for ln in lines[1:] if ln]
        # The last line may be cut off by the kill.
        if counts and not text.endswith("\n"):
            counts.pop()
        for i, ln in enumerate(counts, 1):
            if ln != f"COUNT {i}":
                raise AssertionError(f"line {i}: {ln!r}")
        if not lo <= len(counts) <= hi:
            raise AssertionError(f"{len(counts)} ticks in {run_s}s "
                                 f"(+ firmware), expected {lo}..{hi}")
    return fn


def expect_short_hello(r, path, max_insns):
    """The hello fast path really is taken, and stays short."""
    def fn():
        runs = r.trace_insns(path, "console=ttyS0 tg.scenario=hello")
        total = sum(n for _, n in runs)
        print(f"     {path}: {len(runs)} instructions from entry to reset "
              f"({total} executions incl. rep iterations)")
        if not runs or len(runs) > max_insns:
            raise AssertionError(f"{len(runs)} instructions, max {max_insns}")
    return fn


# microvm: virtio-mmio transports at 0xfeb00000 + 512 * i, filled from the
# top, listed here top first.
MICROVM_TOKENS = " ".join(f"virtio_mmio.device=512@{0xfeb00000 + i * 512:#x}:{5 + i}"
                          for i in range(23, 15, -1))


def microvm(r, append, devices):
    """QEMU command line: microvm with an i8042 (for the reset), modern
    virtio-mmio devices, serial on stdio."""
    return [r.qemu, "-M", "microvm", "-m", "128", "-display", "none",
            "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-device", "i8042"] + r.accel_args + [
            "-kernel", r.elf, "-append", f"{append} {MICROVM_TOKENS}",
            "-global", "virtio-mmio.force-legacy=false"] + devices


def read_until(p, text, want, timeout):
    """Appends p's stdout to text until it contains want; returns text."""
    deadline = time.monotonic() + timeout
    while want not in text:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            raise AssertionError(f"no {want!r} in {text!r}")
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"qemu exited; output {text!r}")
        text += chunk.decode(errors="replace")
    return text


def blk_disks(d):
    rw, ro = os.path.join(d, "rw.img"), os.path.join(d, "ro.img")
    with open(rw, "wb") as f:
        f.write(b"HEARTH-SECTOR-0!")
        f.truncate(64 << 20)
    with open(ro, "wb") as f:
        f.truncate(1 << 20)
    return rw, ["-drive", f"id=rw,file={rw},format=raw,if=none",
                "-device", "virtio-blk-device,drive=rw,serial=tg-qemu",
                "-drive", f"id=ro,file={ro},format=raw,if=none,readonly=on",
                "-device", "virtio-blk-device,drive=ro"]


def expect_blk(r):
    """blk against QEMU's virtio-blk, then the written pattern on the host
    side."""
    def fn():
        with tempfile.TemporaryDirectory() as d:
            rw, disks = blk_disks(d)
            cmd = microvm(r, "tg.scenario=blk tg.blk.bench=20", disks)
            p = subprocess.run(cmd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30 + r.boot_s)
            want = ("BLK-CAPACITY 131072\n"
                    "BLK-SECTOR0 4845415254482d534543544f522d3021\n"
                    "BLK-ID tg-qemu\nBLK-WRITE-OK sector=8 count=8\n"
                    "BLK-OOR-IOERR\nBLK-RO-REFUSED\nBLK-BENCH-START\n"
                    "BLK-BENCH-END 20\nBLK-OK\n")
            text = p.stdout.decode(errors="replace")
            if text != want:
                raise AssertionError(f"got {text!r} {p.stderr!r}")
            with open(rw, "rb") as f:
                f.seek(8 * 512)
                data = f.read(8 * 512)
            if data != bytes((i * 31 + 7) & 0xFF for i in range(8 * 512)):
                raise AssertionError("pattern not on the disk image")
    return fn


def expect_blk_hold(r):
    """tg.blk.hold=1: holds after BLK-HOLD until a byte comes on COM1."""
    def fn():
        with tempfile.TemporaryDirectory() as d:
            _, disks = blk_disks(d)
            cmd = microvm(r, "tg.scenario=blk tg.blk.hold=1", disks)
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
            try:
                text = read_until(p, "", "BLK-HOLD\n", 20 + r.boot_s)
                if select.select([p.stdout], [], [], 0.5)[0]:
                    raise AssertionError("output went on without input")
                p.stdin.write(b"x")
                p.stdin.flush()
                text += p.communicate(timeout=20)[0].decode(errors="replace")
            finally:
                p.kill()
                p.wait()
            want = ("BLK-CAPACITY 131072\n"
                    "BLK-SECTOR0 4845415254482d534543544f522d3021\n"
                    "BLK-ID tg-qemu\nBLK-WRITE-OK sector=8 count=8\n"
                    "BLK-HOLD\nBLK-READBACK-OK\nBLK-OOR-IOERR\n"
                    "BLK-RO-REFUSED\nBLK-OK\n")
            if text != want:
                raise AssertionError(f"got {text!r}")
    return fn


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expect_net(r, count=200, window=16):
    """net against QEMU's virtio-net on user networking (slirp: host
    10.0.2.2 answers ARP and ping, forwards UDP to the host's loopback):
    the hello reaches a host socket, then count datagrams to a forwarded
    port come back."""
    def fn():
        hello = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hello.bind(("127.0.0.1", 0))
        hello.settimeout(10)
        echo.settimeout(10)
        fwd = free_udp_port()
        cmd = microvm(
            r, "tg.scenario=net tg.net.ip=10.0.2.15 tg.net.host=10.0.2.2 "
               f"tg.net.port={hello.getsockname()[1]}",
            ["-netdev", f"user,id=n0,hostfwd=udp:127.0.0.1:{fwd}-:7778",
             "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56"])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        try:
            text = read_until(p, "", "NET-UDP-SENT\n", 20 + r.boot_s)
            data = hello.recv(2048)
            if data != b"HELLO-UDP 10.0.2.15":
                raise AssertionError(f"hello {data!r}")
            sent = got = 0
            while got < count:
                while sent < count and sent - got < window:
                    echo.sendto(b"dgram-%d" % sent, ("127.0.0.1", fwd))
                    sent += 1
                data = echo.recv(2048)
                if data != b"dgram-%d" % got:
                    raise AssertionError(f"echo {got}: {data!r}")
                got += 1
            p.kill()
            text += p.stdout.read().decode(errors="replace")
        finally:
            p.kill()
            p.wait()
            hello.close()
            echo.close()
        want = (r"NET-READY mac=52:54:00:12:34:56 ip=10\.0\.2\.15\n"
                r"NET-ARP-OK host_mac=([0-9a-f]{2}:){5}[0-9a-f]{2}\n"
                r"NET-PING-OK\nNET-UDP-SENT\n")
        if not re.fullmatch(want, text):
            raise AssertionError(f"got {text!r}")
    return fn


def check_bzimage(r):
    def fn():
        d = open(r.bz, "rb").read()
        u8 = lambda o: d[o]  # noqa: E731
        u16 = lambda o: struct.unpack_from("<H", d, o)[0]  # noqa: E731
        u32 = lambda o: struct.unpack_from("<I", d, o)[0]  # noqa: E731
        u64 = lambda o: struct.unpack_from("<Q", d, o)[0]  # noqa: E731
        setup = (u8(0x1F1) + 1) * 512
        want = {
            "boot_flag": (u16(0x1FE), 0xAA55),
            "jump": (d[0x200], 0xEB),
            "header": (d[0x202:0x206], b"HdrS"),
            "version": (u16(0x206), 0x020F),
            "loadflags.LOADED_HIGH": (u8(0x211) & 1, 1),
            "code32_start": (u32(0x214), 0x100000),
            "kernel_alignment": (u32(0x230), 0x200000),
            "relocatable_kernel": (u8(0x234), 0),
            "xloadflags.XLF_KERNEL_64": (u16(0x236) & 1, 1),
            "cmdline_size": (u32(0x238), 0x7FF),
            "pref_address": (u64(0x258), 0x100000),
            "syssize": (u32(0x1F4) * 16, len(d) - setup),
            "kernel_info": (d[setup + u32(0x268):setup + u32(0x268) + 4],
                            b"LToP"),
        }
        bad = {k: v for k, v in want.items() if v[0] != v[1]}
        if bad:
            raise AssertionError(f"bad header fields: {bad}")
        if 0x202 + d[0x201] != 0x26C:
            raise AssertionError("jump does not end at the 2.15 header end")
        if u32(0x260) < 0x40000:
            raise AssertionError(f"init_size {u32(0x260):#x} too small")
        # The payload is the ELF's flat image; entry64 at +0x200.
        flat = open(os.path.join(r.out, "testguest.bin"), "rb").read()
        if d[setup:setup + len(flat)] != flat:
            raise AssertionError("payload differs from testguest.bin")
    return fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--accel", choices=sorted(ACCEL), default="tcg")
    ap.add_argument("-k", default=None, help="run only checks containing K")
    r = Runner(ap.parse_args())

    r.check("bzimage-header", check_bzimage(r))
    for path in ("pvh", "linux64"):
        p = path
        r.check(f"{p}/hello", expect_exact(
            r, p, "console=ttyS0 tg.scenario=hello", "GUEST-READY\n"))
        r.check(f"{p}/hello-only-token", expect_exact(
            r, p, "tg.scenario=hello", "GUEST-READY\n"))
        r.check(f"{p}/hello-many-tokens", expect_exact(
            r, p, "console=ttyS0 reboot=k panic=1 pci=off  nokaslr "
                  "virtio_mmio.device=4K@0xd0000000:5 tg.scenario=hello "
                  "tg.period_ms=7 quiet", "GUEST-READY\n"))
        r.check(f"{p}/hello-spaces", expect_exact(
            r, p, "   tg.scenario=hello   ", "GUEST-READY\n"))
        if r.accel_args[1] == "tcg":
            r.check(f"{p}/hello-insn-count", expect_short_hello(
                r, p, 60 if p == "pvh" else 48))
        r.check(f"{p}/smp-4", expect_exact(
            r, p, "console=ttyS0 tg.scenario=smp",
            "SMP-OK cpus=4 apic_ids=0,1,2,3\n", smp=4))
        r.check(f"{p}/fault", expect_fault(r, p))
        r.check(f"{p}/counter", expect_counter(r, p, None, 3, 10))
        r.check(f"{p}/unknown", expect_exact(
            r, p, "console=ttyS0 tg.scenario=nope",
            "TG-ERROR unknown scenario nope\n"))

    p = "pvh"
    r.check("pvh/smp-1", expect_exact(
        r, p, "tg.scenario=smp", "SMP-OK cpus=1 apic_ids=0\n", smp=1))
    r.check("pvh/smp-2", expect_exact(
        r, p, "tg.scenario=smp", "SMP-OK cpus=2 apic_ids=0,1\n", smp=2))
    r.check("pvh/smp-8", expect_exact(
        r, p, "tg.scenario=smp",
        "SMP-OK cpus=8 apic_ids=0,1,2,3,4,5,6,7\n", smp=8))
    r.check("pvh/hello-suffix", expect_exact(
        r, p, "tg.scenario=hellox", "TG-ERROR unknown scenario hellox\n"))
    r.check("pvh/hello-prefix", expect_exact(
        r, p, "tg.scenario=hell", "TG-ERROR unknown scenario hell\n"))
    r.check("pvh/key-prefix", expect_exact(
        r, p, "xtg.scenario=hello", "TG-ERROR unknown scenario \n"))
    r.check("pvh/first-wins", expect_exact(
        r, p, "tg.scenario=nope tg.scenario=hello",
        "TG-ERROR unknown scenario nope\n"))
    r.check("pvh/no-scenario", expect_exact(
        r, p, "console=ttyS0", "TG-ERROR unknown scenario \n"))
    r.check("pvh/empty-cmdline", expect_exact(
        r, p, "", "TG-ERROR unknown scenario \n"))
    long_tail = " x=" + "y" * 5000
    r.check("pvh/long-cmdline-hello", expect_exact(
        r, p, "tg.scenario=hello" + long_tail, "GUEST-READY\n"))
    r.check("pvh/long-cmdline-c-path", expect_exact(
        r, p, "tg.scenario=nope" + long_tail,
        "TG-ERROR unknown scenario nope\n"))
    # Only the first 4088 characters are kept.
    r.check("pvh/long-cmdline-truncated", expect_exact(
        r, p, "x=" + "y" * 4090 + " tg.scenario=hello",
        "TG-ERROR unknown scenario \n"))
    r.check("pvh/long-cmdline-last-token", expect_exact(
        r, p, "x=" + "y" * (4088 - 2 - 18) + " tg.scenario=hello",
        "GUEST-READY\n"))
    r.check("pvh/long-cmdline-cut-token", expect_exact(
        r, p, "x=" + "y" * (4088 - 2 - 17) + " tg.scenario=hello",
        "TG-ERROR unknown scenario hell\n"))
    r.check("pvh/counter-period", expect_counter(r, p, 250, 3, 4))
    r.check("microvm/blk", expect_blk(r))
    r.check("microvm/blk-hold", expect_blk_hold(r))
    r.check("microvm/net", expect_net(r))

    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
