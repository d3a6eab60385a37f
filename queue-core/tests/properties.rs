//! Property tests of the parsers and the state machine, over many generated inputs: no input
//! panics, what parses prints back to itself, and no sequence of operations leaves the graph.
//! A fixed-seed generator keeps every run the same (a failure names its case).

use queue_core::channel::{ChannelConfig, ChannelLoad, check_name};
use queue_core::options::parse_duration;
use queue_core::{JobState, OperatorAction, RetryPattern};

/// xorshift64*: small, deterministic, good enough to spread cases.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A string of up to `max` characters drawn from `alphabet`, sometimes from useful tokens.
    fn text(&mut self, alphabet: &[&str], max: usize) -> String {
        let len = self.below(max + 1);
        (0..len).map(|_| alphabet[self.below(alphabet.len())]).collect()
    }
}

const CASES: usize = 20_000;

#[test]
fn channel_configurations_parse_or_fail_cleanly_and_round_trip() {
    let mut g = Gen(0x5eed_0001);
    let alphabet =
        ["root", ".", "export", "mail", ":", ",", "1", "4", "0", "sequential", " ", "x", "_", "-", "9"];
    let mut parsed = 0;
    for case in 0..CASES {
        let text = g.text(&alphabet, 12);
        let Ok(config) = text.parse::<ChannelConfig>() else { continue };
        parsed += 1;
        let printed = config.to_string();
        let again: ChannelConfig =
            printed.parse().unwrap_or_else(|e| panic!("case {case}: {text:?} -> {printed:?}: {e}"));
        assert_eq!(again, config, "case {case}: {text:?}");
        assert!(
            config.channels().all(|c| (c.capacity > 0 || c.name != "root") && check_name(&c.name).is_ok()),
            "case {case}: {text:?}"
        );
        assert!(config.capacity("root").is_some(), "case {case}: root always exists");
        // Every job channel runs under a configured channel whose capacity holds.
        let job_channel =
            format!("root.{}", g.text(&["a", "b", "export", "mail", "."], 4)).replace("..", ".");
        let job_channel = job_channel.trim_end_matches('.');
        let node = config.node_for(job_channel);
        assert!(config.capacity(node).is_some(), "case {case}: {job_channel} -> {node}");
        let mut load = ChannelLoad::default();
        while load.free(&config, node) > 0 {
            load.start(node);
        }
        assert!(
            config.chain(node).all(|c| load.running_under(&config, &c.name) <= c.capacity),
            "case {case}"
        );
    }
    assert!(parsed > 100, "the generator reaches valid configurations ({parsed})");
}

#[test]
fn retry_patterns_parse_or_fail_cleanly_and_round_trip() {
    let mut g = Gen(0x5eed_0002);
    let alphabet = ["1", "5", "0", "10", ":", ",", " ", "x", "600", "-"];
    let mut parsed = 0;
    for case in 0..CASES {
        let text = g.text(&alphabet, 10);
        let Ok(pattern) = text.parse::<RetryPattern>() else { continue };
        parsed += 1;
        let again: RetryPattern = pattern.to_string().parse().unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(again, pattern, "case {case}: {text:?}");
        for tries in 0..20 {
            let _ = pattern.delay(tries);
        }
    }
    assert!(parsed > 100, "the generator reaches valid patterns ({parsed})");
}

#[test]
fn durations_parse_or_fail_cleanly() {
    let mut g = Gen(0x5eed_0003);
    let alphabet = ["1", "30", "0", "s", "m", "h", "d", "ms", " ", "x", "99999999999"];
    for _ in 0..CASES {
        let text = g.text(&alphabet, 6);
        if let Ok(d) = parse_duration(&text) {
            assert!(!d.is_zero(), "{text:?}");
        }
    }
}

#[test]
fn no_sequence_of_operations_leaves_the_state_machine() {
    let mut g = Gen(0x5eed_0004);
    let actions = [OperatorAction::Requeue, OperatorAction::Cancel, OperatorAction::SetDone];
    for case in 0..CASES / 10 {
        let mut state = if g.below(4) == 0 { JobState::WaitDependencies } else { JobState::Pending };
        for step in 0..40 {
            let before = state;
            if g.below(2) == 0 {
                // The worker's and the parents' moves.
                let next = JobState::ALL[g.below(JobState::ALL.len())];
                match state.transition(next) {
                    Ok(s) => state = s,
                    Err(_) => assert!(!state.can_become(next), "case {case} step {step}"),
                }
            } else {
                let action = actions[g.below(actions.len())];
                match action.check(state) {
                    Ok(s) => state = s,
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
            assert!(
                before == state || before.can_become(state),
                "case {case} step {step}: {before} -> {state}"
            );
            if before == JobState::Done {
                assert_eq!(state, JobState::Done, "case {case}: done is final");
            }
        }
    }
}
