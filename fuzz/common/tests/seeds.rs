//! The hand-written seeds reach the code they were written for.

use hearth::fuzzing::decode_snapshot_state;

#[test]
fn snapshot_seed_decodes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../corpus/snapshot_state_decode/seed-valid-state"
    );
    let data = std::fs::read(path).expect("seed");
    // The seed is a selector byte and a header description: rebuild the
    // file the target builds and check that it decodes.
    let body = &data[13..];
    let mut file = Vec::new();
    file.extend_from_slice(b"HEARTHSN");
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&0u16.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut d = crc64fast::Digest::new();
    d.write(body);
    file.extend_from_slice(&d.sum64().to_le_bytes());
    file.extend_from_slice(body);
    let again = decode_snapshot_state(&file).expect("the seed state decodes");
    assert!(decode_snapshot_state(&again).is_ok());
}

#[test]
fn config_seeds_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/config_json");
    let mut ok = 0;
    for e in std::fs::read_dir(dir).expect("corpus").flatten() {
        if e.file_name().to_string_lossy().starts_with("seed-valid") {
            let text = std::fs::read_to_string(e.path()).expect("seed");
            hearth::VmConfig::from_json(&text).unwrap_or_else(|err| panic!("{:?}: {err}", e.path()));
            ok += 1;
        }
    }
    assert!(ok > 0);
}
