//! Any text into `hearth::VmConfig::from_json`, then `validate()`.
//!
//! Invariants: no panic; a configuration that parses validates; its JSON
//! form (`to_json`) parses back to an equal configuration.

use hearth::VmConfig;

/// The `config_json` target.
pub fn config_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = VmConfig::from_json(&text) else {
        return;
    };
    assert_eq!(config.validate(), Ok(()), "from_json returned an invalid config");
    let json = config.to_json();
    match VmConfig::from_json(&json) {
        Ok(again) => assert_eq!(again, config, "to_json/from_json round trip changed the config"),
        Err(e) => panic!("to_json produced JSON that does not parse back: {e}\n{json}"),
    }
}
