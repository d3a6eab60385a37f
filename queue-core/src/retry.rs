//! Retry patterns: `"1:10,5:60,10:600"` reads "from the 1st try wait 10 s, from the 5th try wait
//! 60 s, from the 10th try wait 10 min" (queue_job's `retry_pattern`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::options::DEFAULT_RETRY_DELAY;

/// Delays before the next try, by number of tries done.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryPattern {
    steps: BTreeMap<u32, u64>,
}

impl FromStr for RetryPattern {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut steps = BTreeMap::new();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bad = || {
                Error::RetryPattern(format!(
                    "expected items like \"5:60\" (from the 5th try, wait 60 seconds) in {text:?}, got {token:?}"
                ))
            };
            let (tries, seconds) = token.split_once(':').ok_or_else(bad)?;
            let tries: u32 = tries.trim().parse().map_err(|_| bad())?;
            let seconds: u64 = seconds.trim().parse().map_err(|_| bad())?;
            if tries == 0 {
                return Err(Error::RetryPattern(format!(
                    "tries are counted from 1 in {text:?}, got {token:?}"
                )));
            }
            if steps.insert(tries, seconds).is_some() {
                return Err(Error::RetryPattern(format!("try {tries} appears twice in {text:?}")));
            }
        }
        if steps.is_empty() {
            return Err(Error::RetryPattern(format!(
                "expected at least one item like \"1:10\", got {text:?}"
            )));
        }
        Ok(RetryPattern { steps })
    }
}

impl fmt::Display for RetryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (tries, seconds)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{tries}:{seconds}")?;
        }
        Ok(())
    }
}

impl RetryPattern {
    /// The delay after `tries` tries: the step with the largest try count not above `tries`;
    /// [`DEFAULT_RETRY_DELAY`] before the first step.
    pub fn delay(&self, tries: u32) -> Duration {
        self.steps
            .range(..=tries)
            .next_back()
            .map(|(_, seconds)| Duration::from_secs(*seconds))
            .unwrap_or(DEFAULT_RETRY_DELAY)
    }
}

/// The delay after `tries` tries for a function whose pattern is `pattern` (if any).
pub fn delay_for(pattern: Option<&RetryPattern>, tries: u32) -> Duration {
    pattern.map_or(DEFAULT_RETRY_DELAY, |p| p.delay(tries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_apply_from_their_try_on() {
        let p: RetryPattern = "1:10,5:60,10:600".parse().expect("valid");
        let delays: Vec<u64> = (1..=12).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![10, 10, 10, 10, 60, 60, 60, 60, 60, 600, 600, 600]);
        assert_eq!(p.to_string(), "1:10,5:60,10:600");
    }

    #[test]
    fn before_the_first_step_the_default_applies() {
        let p: RetryPattern = "3:5".parse().expect("valid");
        assert_eq!(p.delay(1), DEFAULT_RETRY_DELAY);
        assert_eq!(p.delay(3), Duration::from_secs(5));
        assert_eq!(delay_for(None, 4), DEFAULT_RETRY_DELAY);
    }

    #[test]
    fn errors_name_the_bad_item() {
        let cases = [
            (
                "1:x,5:60",
                r#"invalid retry pattern: expected items like "5:60" (from the 5th try, wait 60 seconds) in "1:x,5:60", got "1:x""#,
            ),
            (
                "10",
                r#"invalid retry pattern: expected items like "5:60" (from the 5th try, wait 60 seconds) in "10", got "10""#,
            ),
            ("0:10", r#"invalid retry pattern: tries are counted from 1 in "0:10", got "0:10""#),
            ("1:10,1:20", r#"invalid retry pattern: try 1 appears twice in "1:10,1:20""#),
            ("", r#"invalid retry pattern: expected at least one item like "1:10", got """#),
        ];
        for (text, message) in cases {
            assert_eq!(text.parse::<RetryPattern>().expect_err(text).to_string(), message);
        }
    }
}
