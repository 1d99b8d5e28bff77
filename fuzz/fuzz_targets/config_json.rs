#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::config_json` (fuzz/common/src/targets/config_json.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::config_json(data));
