#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::serial` (fuzz/common/src/targets/serial.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::serial(data));
