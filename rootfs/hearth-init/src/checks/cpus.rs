//! `cpus`: the number of online CPUs equals `hearth.expect_cpus=N`.

use super::{Context, Outcome};

pub fn run(ctx: &Context<'_>) -> Outcome {
    evaluate(ctx.system.online_cpus.clone(), ctx.cmdline.expect_cpus())
}

fn evaluate(online: Result<u32, String>, expected: Option<Result<u32, String>>) -> Outcome {
    let online = match online {
        Ok(n) => n,
        Err(e) => return Outcome::Fail(format!("online CPUs unknown: {e}")),
    };
    match expected {
        None => Outcome::Fail(format!(
            "online={online} but hearth.expect_cpus is not on the command line"
        )),
        Some(Err(bad)) => Outcome::Fail(format!(
            "online={online} but hearth.expect_cpus={bad:?} is not a number"
        )),
        Some(Ok(want)) if want == online => Outcome::Pass(format!("online={online} expected={want}")),
        Some(Ok(want)) => Outcome::Fail(format!("online={online} expected={want}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_count_passes() {
        assert_eq!(
            evaluate(Ok(2), Some(Ok(2))),
            Outcome::Pass("online=2 expected=2".to_owned())
        );
    }

    #[test]
    fn mismatch_fails_with_both_numbers() {
        assert_eq!(
            evaluate(Ok(1), Some(Ok(2))),
            Outcome::Fail("online=1 expected=2".to_owned())
        );
    }

    #[test]
    fn missing_or_bad_expectation_fails() {
        assert!(matches!(evaluate(Ok(1), None), Outcome::Fail(_)));
        assert!(matches!(
            evaluate(Ok(1), Some(Err("x".to_owned()))),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            evaluate(Err("no sysfs".to_owned()), Some(Ok(1))),
            Outcome::Fail(_)
        ));
    }
}
