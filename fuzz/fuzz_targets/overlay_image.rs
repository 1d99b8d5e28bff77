#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::overlay_image` (fuzz/common/src/targets/overlay_image.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::overlay_image(data));
