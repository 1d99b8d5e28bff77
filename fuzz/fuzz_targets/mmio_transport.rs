#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::mmio_transport` (fuzz/common/src/targets/mmio_transport.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::mmio_transport(data));
