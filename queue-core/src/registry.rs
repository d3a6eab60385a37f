//! Function name → entry, built once from the entries a binary links, rejecting duplicates.
//!
//! `queue-diesel` collects its job functions with `inventory` and builds one [`Registry`] from
//! them; this module holds the part that needs no linker tricks.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Something registered under a unique name.
pub trait Named {
    /// The unique name.
    fn name(&self) -> &str;
}

/// A map from function name to entry.
#[derive(Debug)]
pub struct Registry<T: 'static> {
    entries: HashMap<&'static str, &'static T>,
}

impl<T: Named + 'static> Registry<T> {
    /// Build the registry; two entries with one name are an error naming it.
    pub fn build(entries: impl IntoIterator<Item = &'static T>) -> Result<Self> {
        let mut map = HashMap::new();
        for entry in entries {
            let name: &'static str = entry.name();
            if map.insert(name, entry).is_some() {
                return Err(Error::DuplicateFunction(name.to_owned()));
            }
        }
        Ok(Registry { entries: map })
    }

    /// The entry registered under `name`.
    pub fn get(&self, name: &str) -> Option<&'static T> {
        self.entries.get(name).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.keys().copied().collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Entry(&'static str);

    impl Named for Entry {
        fn name(&self) -> &str {
            self.0
        }
    }

    static A: Entry = Entry("res.partner.export");
    static B: Entry = Entry("res.partner.mail");
    static A2: Entry = Entry("res.partner.export");

    #[test]
    fn finds_entries_by_name() {
        let registry = Registry::build([&A, &B]).expect("unique names");
        assert_eq!(registry.len(), 2);
        assert!(registry.get("res.partner.mail").is_some());
        assert!(registry.get("res.partner.nope").is_none());
        assert_eq!(registry.names(), vec!["res.partner.export", "res.partner.mail"]);
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = Registry::build([&A, &B, &A2]).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            r#"job function "res.partner.export" is registered twice; function names must be unique"#
        );
    }
}
