//! [`SortedSet`]: members ordered by a whole-number score, like a Redis
//! sorted set.

use std::collections::{BTreeSet, HashMap};

/// Members ordered by a score (a Redis sorted set with whole-number
/// scores): found by member, and walked or trimmed from the lowest score
/// up. The cache keeps each tag's entry keys in one, scored by expiry, so
/// expired members are dropped without looking at the others.
///
/// ```
/// use redis_layers::memory::SortedSet;
///
/// let mut set = SortedSet::new();
/// assert!(set.insert("b", 20));
/// assert!(set.insert("a", 10));
/// assert!(!set.insert("b", 30), "b was there: its score changes");
/// assert_eq!(set.remove_up_to(10), 1, "like ZREMRANGEBYSCORE -inf 10");
/// assert_eq!(set.iter().collect::<Vec<_>>(), [("b", 30)]);
/// assert_eq!(set.last(), Some(("b", 30)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortedSet {
    scores: HashMap<String, u64>,
    order: BTreeSet<(u64, String)>,
}

impl SortedSet {
    /// An empty set.
    pub fn new() -> Self {
        SortedSet::default()
    }

    /// How many members it holds (like `ZCARD`).
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// True when it holds no member.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The score of `member`, if it is one (like `ZSCORE`).
    pub fn score(&self, member: &str) -> Option<u64> {
        self.scores.get(member).copied()
    }

    /// Adds `member` with `score`, or gives it that score (like `ZADD`);
    /// true when it was not a member.
    pub fn insert(&mut self, member: &str, score: u64) -> bool {
        match self.scores.get_mut(member) {
            Some(old) => {
                if *old != score {
                    self.order.remove(&(*old, member.to_owned()));
                    self.order.insert((score, member.to_owned()));
                    *old = score;
                }
                false
            }
            None => {
                self.scores.insert(member.to_owned(), score);
                self.order.insert((score, member.to_owned()));
                true
            }
        }
    }

    /// Removes `member`; its score if it was one (like `ZREM`).
    pub fn remove(&mut self, member: &str) -> Option<u64> {
        let score = self.scores.remove(member)?;
        self.order.remove(&(score, member.to_owned()));
        Some(score)
    }

    /// Removes every member scored at most `max` (like `ZREMRANGEBYSCORE
    /// key -inf max`); how many.
    pub fn remove_up_to(&mut self, max: u64) -> usize {
        let mut removed = 0;
        while let Some((score, _)) = self.order.first() {
            if *score > max {
                break;
            }
            if let Some((_, member)) = self.order.pop_first() {
                self.scores.remove(&member);
                removed += 1;
            }
        }
        removed
    }

    /// The members with their scores, lowest score first (ties by member).
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.order.iter().map(|(score, m)| (m.as_str(), *score))
    }

    /// The member with the highest score, and that score.
    pub fn last(&self) -> Option<(&str, u64)> {
        self.order.last().map(|(score, m)| (m.as_str(), *score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_one_score_each_in_order() {
        let mut set = SortedSet::new();
        assert!(set.is_empty());
        for (m, s) in [("c", 3), ("a", 1), ("b", 2)] {
            assert!(set.insert(m, s));
        }
        assert!(!set.insert("a", 5));
        assert_eq!(set.len(), 3);
        assert_eq!(set.score("a"), Some(5));
        let order: Vec<_> = set.iter().map(|(m, _)| m).collect();
        assert_eq!(order, ["b", "c", "a"]);
        assert_eq!(set.remove("c"), Some(3));
        assert_eq!(set.remove("c"), None);
        assert_eq!(set.remove_up_to(4), 1, "b");
        assert_eq!(set.iter().collect::<Vec<_>>(), [("a", 5)]);
        assert_eq!(set.remove_up_to(5), 1, "a score equal to the bound goes");
        assert!(set.is_empty());
        assert_eq!(set.last(), None);
    }
}
