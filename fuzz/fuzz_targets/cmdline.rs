#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::cmdline` (fuzz/common/src/targets/cmdline.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::cmdline(data));
