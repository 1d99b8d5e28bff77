#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::vsock_packets` (fuzz/common/src/targets/vsock_packets.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::vsock_packets(data));
