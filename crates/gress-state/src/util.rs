//! Small helpers shared by the modules of this crate.

use std::fmt;

/// Formats bytes as lower-case hex, shortened past 32 bytes.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(32)];
        for b in shown {
            write!(f, "{b:02x}")?;
        }
        if shown.len() < self.0.len() {
            write!(f, "..({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}
