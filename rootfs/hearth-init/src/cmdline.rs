//! Parsing of the kernel command line (`/proc/cmdline`).
//!
//! Pure functions only: no I/O, so everything here is unit tested on the
//! host.

/// Parameter naming the checks to run, comma-separated, in order.
pub const CHECKS_PARAM: &str = "hearth.checks";
/// Parameter giving the number of online CPUs the `cpus` check expects.
pub const EXPECT_CPUS_PARAM: &str = "hearth.expect_cpus";
/// Parameter giving the size in bytes `blk-write` (and `blk-ro`, when
/// present) expects of /dev/vda.
pub const BLK_BYTES_PARAM: &str = "hearth.blk.bytes";
/// Parameter giving the length of the file `blk-write` writes.
pub const BLK_LEN_PARAM: &str = "hearth.blk.len";
/// Parameter whose low byte `blk-write` XORs into its byte pattern.
pub const BLK_SEED_PARAM: &str = "hearth.blk.seed";
/// `hearth.agent=1`: after the checks, run the guest agent instead of
/// restarting.
pub const AGENT_PARAM: &str = "hearth.agent";
/// The agent's vsock port (default [`hearth_agent_protocol::DEFAULT_PORT`]).
pub const AGENT_PORT_PARAM: &str = "hearth.agent.port";

/// A parsed kernel command line: its parameters in order of appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    /// Parses a kernel command line the way the kernel splits it: parameters
    /// are separated by whitespace, `key=value` or a bare `key`, and double
    /// quotes group text containing spaces (the quotes themselves are
    /// dropped).
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        for token in split_tokens(text) {
            let param = match token.split_once('=') {
                Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                None => (token, None),
            };
            if !param.0.is_empty() {
                params.push(param);
            }
        }
        Self { params }
    }

    /// The value of the last occurrence of `key`, if it has one
    /// (`key=value`); `None` for an absent key or a bare `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The check names from `hearth.checks=a,b,c`, in order. Empty items are
    /// skipped; an absent parameter means no checks.
    pub fn checks(&self) -> Vec<&str> {
        self.get(CHECKS_PARAM)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `hearth.expect_cpus=N`: `None` when absent, `Some(Err(text))` when the
    /// value is not a number.
    pub fn expect_cpus(&self) -> Option<Result<u32, String>> {
        self.get(EXPECT_CPUS_PARAM)
            .map(|value| value.trim().parse::<u32>().map_err(|_| value.to_owned()))
    }

    /// `Some(port)` when `hearth.agent=1` asks for the agent. A bad
    /// `hearth.agent.port` is `Err(text)`.
    pub fn agent_port(&self) -> Option<Result<u32, String>> {
        if self.get(AGENT_PARAM) != Some("1") {
            return None;
        }
        Some(match self.get(AGENT_PORT_PARAM) {
            None => Ok(hearth_agent_protocol::DEFAULT_PORT),
            Some(text) => parse_u64(text)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| text.to_owned()),
        })
    }

    /// `key=N` as an unsigned 64-bit number, decimal or `0x` hexadecimal:
    /// `None` when absent (or bare), `Some(Err(text))` when the value is
    /// not such a number.
    pub fn get_u64(&self, key: &str) -> Option<Result<u64, String>> {
        self.get(key)
            .map(|value| parse_u64(value).ok_or_else(|| value.to_owned()))
    }
}

/// An unsigned number, decimal or `0x`/`0X` hexadecimal.
pub fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
    // from_str_radix and parse accept a leading '+'; a number on the
    // command line never has one, so refuse it.
    .filter(|_| !text.contains('+'))
}

/// Splits on unquoted whitespace; double quotes toggle quoting and are
/// removed.
fn split_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    tokens.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            c => {
                current.push(c);
                in_token = true;
            }
        }
    }
    if in_token {
        tokens.push(current);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `key` appears at all, bare or with a value.
    fn has(cmdline: &Cmdline, key: &str) -> bool {
        cmdline.params.iter().any(|(k, _)| k == key)
    }

    const TYPICAL: &str = "console=ttyS0 reboot=k panic=1 pci=off nokaslr \
        hearth.checks=uname,cpus hearth.expect_cpus=1 quiet\n";

    #[test]
    fn empty_command_line_has_nothing() {
        let cmdline = Cmdline::parse("");
        assert_eq!(cmdline, Cmdline::default());
        assert!(cmdline.checks().is_empty());
        assert_eq!(cmdline.expect_cpus(), None);
        assert_eq!(Cmdline::parse(" \n\t "), Cmdline::default());
    }

    #[test]
    fn typical_command_line() {
        let cmdline = Cmdline::parse(TYPICAL);
        assert_eq!(cmdline.get("console"), Some("ttyS0"));
        assert_eq!(cmdline.get("reboot"), Some("k"));
        assert_eq!(cmdline.checks(), vec!["uname", "cpus"]);
        assert_eq!(cmdline.expect_cpus(), Some(Ok(1)));
        // The trailing newline of /proc/cmdline is not part of a value.
        assert_eq!(cmdline.get("quiet"), None);
        assert!(has(&cmdline, "quiet"));
        assert!(has(&cmdline, "nokaslr"));
        assert!(!has(&cmdline, "nokaslr2"));
    }

    #[test]
    fn absent_checks_means_none() {
        let cmdline = Cmdline::parse("console=ttyS0 reboot=k");
        assert!(cmdline.checks().is_empty());
        assert!(!has(&cmdline, CHECKS_PARAM));
    }

    #[test]
    fn empty_items_are_skipped() {
        assert!(Cmdline::parse("hearth.checks=").checks().is_empty());
        assert!(Cmdline::parse("hearth.checks").checks().is_empty());
        assert_eq!(Cmdline::parse("hearth.checks=,a,,b,").checks(), vec!["a", "b"]);
    }

    #[test]
    fn order_and_duplicates_are_kept() {
        assert_eq!(
            Cmdline::parse("hearth.checks=cpus,uname,cpus").checks(),
            vec!["cpus", "uname", "cpus"]
        );
    }

    #[test]
    fn last_occurrence_wins() {
        let cmdline = Cmdline::parse("hearth.checks=a hearth.expect_cpus=2 hearth.checks=b,c");
        assert_eq!(cmdline.checks(), vec!["b", "c"]);
        assert_eq!(cmdline.expect_cpus(), Some(Ok(2)));
    }

    #[test]
    fn value_may_contain_equals() {
        let cmdline = Cmdline::parse("ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off a=b=c");
        assert_eq!(
            cmdline.get("ip"),
            Some("10.0.0.2::10.0.0.1:255.255.255.0::eth0:off")
        );
        assert_eq!(cmdline.get("a"), Some("b=c"));
    }

    #[test]
    fn quotes_group_spaces() {
        let cmdline = Cmdline::parse(r#"x="a b" hearth.checks="uname, cpus" y="#);
        assert_eq!(cmdline.get("x"), Some("a b"));
        assert_eq!(cmdline.checks(), vec!["uname", "cpus"]);
        assert_eq!(cmdline.get("y"), Some(""));
    }

    #[test]
    fn quoted_whole_parameter() {
        let cmdline = Cmdline::parse(r#""hearth.checks=uname" z"#);
        assert_eq!(cmdline.checks(), vec!["uname"]);
        assert!(has(&cmdline, "z"));
    }

    #[test]
    fn bad_expect_cpus_is_reported() {
        assert_eq!(
            Cmdline::parse("hearth.expect_cpus=two").expect_cpus(),
            Some(Err("two".to_owned()))
        );
        assert_eq!(
            Cmdline::parse("hearth.expect_cpus=").expect_cpus(),
            Some(Err(String::new()))
        );
        assert_eq!(
            Cmdline::parse("hearth.expect_cpus=-1").expect_cpus(),
            Some(Err("-1".to_owned()))
        );
    }

    #[test]
    fn u64_values() {
        let cmdline = Cmdline::parse("hearth.blk.bytes=16777216 hearth.blk.seed=0x1F hearth.blk.len=x a= b");
        assert_eq!(cmdline.get_u64(BLK_BYTES_PARAM), Some(Ok(16_777_216)));
        assert_eq!(cmdline.get_u64(BLK_SEED_PARAM), Some(Ok(0x1f)));
        assert_eq!(cmdline.get_u64(BLK_LEN_PARAM), Some(Err("x".to_owned())));
        assert_eq!(cmdline.get_u64("a"), Some(Err(String::new())));
        assert_eq!(cmdline.get_u64("b"), None);
        assert_eq!(cmdline.get_u64("absent"), None);
    }

    #[test]
    fn u64_parsing() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("0xff"), Some(255));
        assert_eq!(parse_u64("0X10"), Some(16));
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("+1"), None);
        assert_eq!(parse_u64("0x+1"), None);
        assert_eq!(parse_u64("1k"), None);
        assert_eq!(parse_u64(""), None);
    }

    #[test]
    fn agent_mode_and_port() {
        assert_eq!(Cmdline::parse("quiet").agent_port(), None);
        assert_eq!(Cmdline::parse("hearth.agent=0").agent_port(), None);
        assert_eq!(Cmdline::parse("hearth.agent").agent_port(), None);
        assert_eq!(Cmdline::parse("hearth.agent.port=5").agent_port(), None);
        assert_eq!(Cmdline::parse("hearth.agent=1").agent_port(), Some(Ok(52)));
        assert_eq!(
            Cmdline::parse("hearth.agent=1 hearth.agent.port=1024").agent_port(),
            Some(Ok(1024))
        );
        assert_eq!(
            Cmdline::parse("hearth.agent.port=0x400 hearth.agent=1").agent_port(),
            Some(Ok(1024))
        );
        assert_eq!(
            Cmdline::parse("hearth.agent=1 hearth.agent.port=4294967296").agent_port(),
            Some(Err("4294967296".to_owned()))
        );
        assert_eq!(
            Cmdline::parse("hearth.agent=1 hearth.agent.port=x").agent_port(),
            Some(Err("x".to_owned()))
        );
    }

    #[test]
    fn empty_key_is_ignored() {
        let cmdline = Cmdline::parse("=x a");
        assert_eq!(cmdline.get(""), None);
        assert!(has(&cmdline, "a"));
    }
}
