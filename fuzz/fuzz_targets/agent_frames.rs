#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::agent_frames` (fuzz/common/src/targets/agent_frames.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::agent_frames(data));
