//! Results that are updated as input arrives, as a changelog (Flink's
//! retract streams): each change inserts, updates or deletes one row of a
//! table, and applying the changes in order gives the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One change of a table's row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Change<T> {
    /// A new row.
    Insert(T),
    /// The old version of an updated row: removed, its new version follows.
    UpdateBefore(T),
    /// The new version of an updated row.
    UpdateAfter(T),
    /// A row removed.
    Delete(T),
}

impl<T> Change<T> {
    /// The row this change is about.
    pub fn row(&self) -> &T {
        match self {
            Change::Insert(r)
            | Change::UpdateBefore(r)
            | Change::UpdateAfter(r)
            | Change::Delete(r) => r,
        }
    }

    /// The row, taken.
    pub fn into_row(self) -> T {
        match self {
            Change::Insert(r)
            | Change::UpdateBefore(r)
            | Change::UpdateAfter(r)
            | Change::Delete(r) => r,
        }
    }

    /// Whether it adds its row (an insert or the new version of an update).
    pub fn adds(&self) -> bool {
        matches!(self, Change::Insert(_) | Change::UpdateAfter(_))
    }

    /// The same change of another row.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Change::Insert(r) => Change::Insert(f(r)),
            Change::UpdateBefore(r) => Change::UpdateBefore(f(r)),
            Change::UpdateAfter(r) => Change::UpdateAfter(f(r)),
            Change::Delete(r) => Change::Delete(f(r)),
        }
    }
}

/// A change that removes a row the table does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change {index} removes a row the table does not hold: {row}")]
pub struct MalformedChange {
    /// The position of the change in the changelog.
    pub index: usize,
    /// The row, as `Debug` prints it.
    pub row: String,
}

/// The table a changelog produces: each row with how many times it is
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogTable<T> {
    rows: BTreeMap<T, usize>,
    applied: usize,
}

impl<T: Ord> Default for ChangelogTable<T> {
    fn default() -> Self {
        ChangelogTable {
            rows: BTreeMap::new(),
            applied: 0,
        }
    }
}

impl<T: Ord + std::fmt::Debug> ChangelogTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table `changes` produce, in order; refused at the first change
    /// that removes a row that is not there.
    pub fn from_changes(
        changes: impl IntoIterator<Item = Change<T>>,
    ) -> Result<Self, MalformedChange> {
        let mut table = Self::new();
        for change in changes {
            table.apply(change)?;
        }
        Ok(table)
    }

    /// Applies one change.
    pub fn apply(&mut self, change: Change<T>) -> Result<(), MalformedChange> {
        let index = self.applied;
        self.applied += 1;
        let adds = change.adds();
        let row = change.into_row();
        if adds {
            *self.rows.entry(row).or_insert(0) += 1;
            return Ok(());
        }
        match self.rows.get_mut(&row) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.rows.remove(&row);
            }
            None => {
                return Err(MalformedChange {
                    index,
                    row: format!("{row:?}"),
                });
            }
        }
        Ok(())
    }

    /// The rows, each as many times as it is there, in order.
    pub fn rows(&self) -> Vec<&T> {
        self.rows
            .iter()
            .flat_map(|(r, &n)| std::iter::repeat_n(r, n))
            .collect()
    }

    /// The rows with their counts.
    pub fn counts(&self) -> &BTreeMap<T, usize> {
        &self.rows
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.values().sum()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changelog_produces_its_table_and_a_stray_removal_is_refused() {
        let table = ChangelogTable::from_changes([
            Change::Insert(("a", 1)),
            Change::Insert(("b", 1)),
            Change::UpdateBefore(("a", 1)),
            Change::UpdateAfter(("a", 2)),
            Change::Delete(("b", 1)),
        ])
        .expect("well formed");
        assert_eq!(table.rows(), vec![&("a", 2)]);
        let err = ChangelogTable::from_changes([Change::Insert(1), Change::UpdateBefore(2)])
            .expect_err("2 is not there");
        assert_eq!(err.index, 1);
    }
}
