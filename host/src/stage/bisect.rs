//! Settling a batch the plugin failed on (a trap, a deadline, its memory cap, an
//! error for the whole call) so that a bad record costs only itself: the batch
//! is tried again in halves, each half that fails is halved again, down to
//! single records, and only a record that fails alone is given up on (set
//! aside by the stage's `on-error` policy). Every other record goes on, in
//! order, once. As Lambda's `BisectBatchOnFunctionError` does for Kinesis.
//!
//! The cost is bounded: a batch of `n` records takes at most `2n - 1` calls
//! plus the retries of the records that fail alone, and splitting stops when
//! [`Settle::budget`] has passed: what is left is given up on as it stands.
//! With `failed-batch = "whole"` the batch is retried whole and given up on
//! whole, for plugins whose batches are all-or-nothing.
//!
//! A record is given up on once it has failed [`Settle::tries`] times in all,
//! counting the failures of the larger parts it was in, and at least once
//! alone: in a batch of 256 a poison record is tried alone once; a batch of
//! one record is tried `tries` times, as before bisecting existed.

use std::ops::Range;
use std::time::{Duration, Instant};

pub use crate::manifest::FailedBatch;

/// How long splitting one failed batch may take before what is left is given up on.
pub const BISECT_BUDGET: Duration = Duration::from_secs(120);

/// What one call on a part did.
pub enum Part {
    /// Its effects are recorded.
    Done,
    /// The plugin failed on it, with this message.
    Failed(String),
}

/// The calls a settlement makes, on ranges of the failed batch, always in order.
pub trait Parts {
    /// Why the settlement stops short (the stage stopped).
    type Stop;

    /// Runs the plugin on one part and records its effects.
    fn attempt(&mut self, part: Range<usize>) -> Result<Part, Self::Stop>;

    /// Applies the error policy to a part the plugin keeps failing on.
    fn give_up(&mut self, part: Range<usize>, reason: &str) -> Result<(), Self::Stop>;

    /// Called before a part is tried again after its own failure (`failures` so far):
    /// a pause, as long as the stage's backoff says.
    fn before_retry(&mut self, _failures: u32) {}

    /// Whether to stop retrying (a shutdown): parts that failed alone are given up on at once.
    fn hurry(&self) -> bool {
        false
    }
}

/// How a failed batch is settled.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    /// Halves, or the whole batch again.
    pub how: FailedBatch,
    /// How many failures of a record (or of the whole batch) before it is given up on.
    pub tries: u32,
    /// How long splitting may take.
    pub budget: Duration,
}

/// A part still to try.
struct Todo {
    part: Range<usize>,
    /// How often the plugin failed on it, or on a larger part holding it.
    failures: u32,
    /// The last failure's message.
    message: String,
    /// Whether this same part failed before (a retry, not a half).
    again: bool,
}

impl Settle {
    /// Settles a batch of `len` records whose first call just failed with `message`:
    /// every record ends either done or given up on, in order.
    pub fn run<P: Parts>(&self, parts: &mut P, len: usize, message: String) -> Result<(), P::Stop> {
        let started = Instant::now();
        // The next part to try is on top.
        let mut todo: Vec<Todo> = Vec::new();
        self.after_failure(parts, &mut todo, 0..len, 1, message)?;
        while let Some(Todo { part, failures, message, again }) = todo.pop() {
            if started.elapsed() > self.budget {
                let reason = format!(
                    "the plugin failed on a batch holding these records, and settling it took longer than {}s: \
                     {message}",
                    self.budget.as_secs()
                );
                parts.give_up(part, &reason)?;
                continue;
            }
            if again {
                parts.before_retry(failures);
            }
            match parts.attempt(part.clone())? {
                Part::Done => {}
                Part::Failed(message) => self.after_failure(parts, &mut todo, part, failures + 1, message)?,
            }
        }
        Ok(())
    }

    /// After the plugin failed on `part` (`failures` times in all): its halves
    /// are tried next, or it is tried again, or given up on.
    fn after_failure<P: Parts>(
        &self,
        parts: &mut P,
        todo: &mut Vec<Todo>,
        part: Range<usize>,
        failures: u32,
        message: String,
    ) -> Result<(), P::Stop> {
        if part.len() > 1 && self.how == FailedBatch::Bisect {
            let middle = part.start + part.len() / 2;
            let second = Todo { part: middle..part.end, failures, message: message.clone(), again: false };
            todo.push(second);
            todo.push(Todo { part: part.start..middle, failures, message, again: false });
            return Ok(());
        }
        if failures >= self.tries || parts.hurry() {
            let what = if part.len() == 1 { "record" } else { "batch" };
            return parts.give_up(part, &format!("the plugin failed on this {what} {failures} times: {message}"));
        }
        todo.push(Todo { part, failures, message, again: true });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `0..n`; the plugin fails on any part holding a poison one.
    struct Fake {
        poison: Vec<usize>,
        calls: usize,
        done: Vec<usize>,
        given_up: Vec<(usize, String)>,
        pauses: Vec<u32>,
    }

    impl Fake {
        fn new(poison: &[usize]) -> Fake {
            Fake { poison: poison.to_vec(), calls: 0, done: Vec::new(), given_up: Vec::new(), pauses: Vec::new() }
        }

        fn settle(&mut self, how: FailedBatch, n: usize) {
            let settle = Settle { how, tries: 3, budget: Duration::from_secs(60) };
            let result: Result<(), ()> = settle.run(self, n, "trapped".to_owned());
            assert!(result.is_ok());
        }
    }

    impl Parts for Fake {
        type Stop = ();

        fn attempt(&mut self, part: Range<usize>) -> Result<Part, ()> {
            self.calls += 1;
            if part.clone().any(|i| self.poison.contains(&i)) {
                return Ok(Part::Failed("trapped".to_owned()));
            }
            self.done.extend(part);
            Ok(Part::Done)
        }

        fn give_up(&mut self, part: Range<usize>, reason: &str) -> Result<(), ()> {
            self.given_up.extend(part.map(|i| (i, reason.to_owned())));
            Ok(())
        }

        fn before_retry(&mut self, failures: u32) {
            self.pauses.push(failures);
        }
    }

    #[test]
    fn one_poison_record_in_a_full_batch_costs_only_itself() {
        let mut fake = Fake::new(&[100]);
        fake.settle(FailedBatch::Bisect, 256);
        assert_eq!(fake.given_up.len(), 1);
        assert_eq!(fake.given_up[0].0, 100);
        assert!(fake.given_up[0].1.contains("failed on this record 9 times: trapped"), "{}", fake.given_up[0].1);
        let others: Vec<usize> = (0..256).filter(|&i| i != 100).collect();
        assert_eq!(fake.done, others, "every other record once, in order");
        // Two calls per level of halving (8 levels), and no pause: the poison record failed in 8 parts.
        assert_eq!(fake.calls, 16);
        assert!(fake.pauses.is_empty());
    }

    #[test]
    fn a_batch_of_one_is_tried_three_times_with_pauses() {
        let mut fake = Fake::new(&[0]);
        fake.settle(FailedBatch::Bisect, 1);
        assert_eq!(fake.calls, 2, "the first call failed before the settlement");
        assert_eq!(fake.pauses, vec![1, 2]);
        assert_eq!(fake.given_up.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0]);
        assert!(fake.given_up[0].1.contains("3 times"));
    }

    #[test]
    fn every_record_poisoned_is_given_up_on_each_alone_and_the_calls_stay_bounded() {
        let poison: Vec<usize> = (0..16).collect();
        let mut fake = Fake::new(&poison);
        fake.settle(FailedBatch::Bisect, 16);
        assert_eq!(fake.given_up.iter().map(|g| g.0).collect::<Vec<_>>(), poison);
        assert!(fake.calls < 2 * 16, "{} calls", fake.calls);
    }

    #[test]
    fn whole_retries_the_batch_and_gives_it_up_whole() {
        let mut fake = Fake::new(&[3]);
        fake.settle(FailedBatch::Whole, 8);
        assert_eq!(fake.calls, 2);
        assert_eq!(fake.given_up.len(), 8);
        assert!(fake.given_up[0].1.contains("failed on this batch 3 times"));
        assert!(fake.done.is_empty());
    }

    #[test]
    fn past_its_budget_what_is_left_is_given_up_on_as_it_stands() {
        let mut fake = Fake::new(&[1]);
        let settle = Settle { how: FailedBatch::Bisect, tries: 3, budget: Duration::ZERO };
        std::thread::sleep(Duration::from_millis(2));
        let result: Result<(), ()> = settle.run(&mut fake, 8, "trapped".to_owned());
        assert!(result.is_ok());
        assert_eq!(fake.calls, 0);
        assert_eq!(fake.given_up.iter().map(|g| g.0).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        assert!(fake.given_up[0].1.contains("took longer than 0s"));
    }
}
