//! How far regions are from each other, for the two decisions that need "nearest": which
//! region serves the people of a region that has lost every node, and where the join API sends
//! someone whose region hosts none of the meeting.
//!
//! Distances are round-trip times in milliseconds between region pairs, given by whoever runs
//! the fleet (`--region-distances seoul:frankfurt=230,seoul:virginia=180`; the chart's
//! `operator.regionDistances`). They are symmetric. A pair not given is "far": farther than
//! every pair that is.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Round-trip times between regions, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Distances(BTreeMap<(String, String), u32>);

impl Distances {
    /// Sets the distance between `a` and `b` (both ways).
    pub fn set(&mut self, a: &str, b: &str, ms: u32) {
        self.0.insert(Self::key(a, b), ms);
    }

    /// The distance between `a` and `b`: 0 for the same region, `None` when not given.
    pub fn get(&self, a: &str, b: &str) -> Option<u32> {
        if a == b {
            return Some(0);
        }
        self.0.get(&Self::key(a, b)).copied()
    }

    /// A sort key for "nearer `from` first": given distances in order, then the pairs not given.
    pub fn rank(&self, from: &str, to: &str) -> u64 {
        self.get(from, to).map_or(u64::MAX, u64::from)
    }

    /// No pair given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        }
    }
}

/// Why a distance table did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("region distance {entry:?}: {why} (expected region:region=milliseconds, comma-separated)")]
pub struct ParseDistancesError {
    entry: String,
    why: &'static str,
}

impl FromStr for Distances {
    type Err = ParseDistancesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Self::default();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why| ParseDistancesError {
                entry: entry.to_owned(),
                why,
            };
            let (pair, ms) = entry.split_once('=').ok_or_else(|| bad("no ="))?;
            let (a, b) = pair
                .split_once(':')
                .ok_or_else(|| bad("no : between the regions"))?;
            let (a, b) = (a.trim(), b.trim());
            if a.is_empty() || b.is_empty() {
                return Err(bad("empty region"));
            }
            if a == b {
                return Err(bad("a region is 0 ms from itself"));
            }
            let ms = ms
                .trim()
                .parse()
                .map_err(|_| bad("not a whole number of milliseconds"))?;
            out.set(a, b, ms);
        }
        Ok(out)
    }
}

impl fmt::Display for Distances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((a, b), ms) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{a}:{b}={ms}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_ways_and_round_trips() {
        let d: Distances = "seoul:frankfurt=230, virginia:frankfurt=90"
            .parse()
            .expect("parses");
        assert_eq!(d.get("frankfurt", "seoul"), Some(230));
        assert_eq!(d.get("frankfurt", "virginia"), Some(90));
        assert_eq!(d.get("seoul", "seoul"), Some(0));
        assert_eq!(d.get("seoul", "virginia"), None);
        assert!(d.rank("seoul", "frankfurt") < d.rank("seoul", "virginia"));
        assert_eq!(d.to_string().parse::<Distances>(), Ok(d));
        assert_eq!("".parse::<Distances>(), Ok(Distances::default()));
    }

    #[test]
    fn bad_tables_say_which_entry() {
        for (s, why) in [
            ("seoul-frankfurt=2", "no :"),
            ("seoul:frankfurt", "no ="),
            ("seoul:frankfurt=fast", "whole number"),
            ("seoul:seoul=3", "itself"),
            (":b=3", "empty"),
        ] {
            let e = s.parse::<Distances>().expect_err(s).to_string();
            assert!(
                e.contains(why) && e.contains(s.split(',').next().unwrap_or(s)),
                "{e}"
            );
        }
    }
}
