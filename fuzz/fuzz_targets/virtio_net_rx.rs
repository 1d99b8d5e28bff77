#![no_main]
//! Thin libFuzzer wrapper: the input structure and invariants are in
//! `hearth_fuzz_common::virtio_net_rx` (fuzz/common/src/targets/virtio_net_rx.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_fuzz_common::virtio_net_rx(data));
