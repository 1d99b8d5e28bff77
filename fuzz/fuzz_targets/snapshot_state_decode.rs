#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::snapshot_state_decode` (fuzz/common/src/targets/snapshot_state_decode.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::snapshot_state_decode(data));
