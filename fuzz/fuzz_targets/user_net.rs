#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::user_net` (fuzz/common/src/targets/user_net.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::user_net(data));
