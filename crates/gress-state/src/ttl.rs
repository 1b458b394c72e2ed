//! TTL rules shared by every backend, and the stored-value header that makes
//! an expiry explicit.
//!
//! Stored form (see docs/format.md, "Stored value"):
//!
//! ```text
//! tag = 0x00 | user value ...                      no expiry
//! tag = 0x01 | expires_at_ms: u64 LE | user value  expires at that instant
//! ```
//!
//! The tag is always present, so no user value can be mistaken for a header.

use std::time::Duration;

use crate::error::{Error, Result};

/// The largest key any backend accepts, in bytes.
pub const MAX_KEY_LEN: usize = 16 << 20;
/// The largest value any backend accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 1 << 30;

const TAG_PLAIN: u8 = 0x00;
const TAG_EXPIRING: u8 = 0x01;
/// Bytes the header adds in front of a value that expires.
pub const EXPIRING_HEADER_LEN: usize = 9;
/// Bytes the header adds in front of a value that never expires.
pub const PLAIN_HEADER_LEN: usize = 1;

/// Rejects keys longer than [`MAX_KEY_LEN`].
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::TooLarge {
            what: "key",
            len: key.len() as u64,
            max: MAX_KEY_LEN as u64,
        });
    }
    Ok(())
}

/// Rejects values longer than [`MAX_VALUE_LEN`].
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::TooLarge {
            what: "value",
            len: value.len() as u64,
            max: MAX_VALUE_LEN as u64,
        });
    }
    Ok(())
}

/// A TTL in whole milliseconds, rounded up so an entry never expires early.
///
/// A zero TTL is rejected: an entry that is expired when written is a bug in
/// the caller, not a delete.
pub fn ttl_ms(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::invalid_argument("ttl", "a TTL must be positive"));
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// How a backend assigns expiries: the `ttl_enabled` / `default_ttl` pair of
/// every backend config, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    default_ms: Option<u64>,
}

impl TtlPolicy {
    /// No default TTL: plain puts never expire.
    pub const DISABLED: TtlPolicy = TtlPolicy { default_ms: None };

    /// Validates a config's TTL fields.
    pub fn new(ttl_enabled: bool, default_ttl: Duration) -> Result<Self> {
        if !ttl_enabled {
            return Ok(Self::DISABLED);
        }
        if default_ttl.is_zero() {
            return Err(Error::invalid_config(
                "default_ttl",
                "must be positive when ttl_enabled is true",
            ));
        }
        Ok(TtlPolicy {
            default_ms: Some(ttl_ms(default_ttl)?),
        })
    }

    /// The default TTL in milliseconds, if plain puts expire.
    pub fn default_ms(&self) -> Option<u64> {
        self.default_ms
    }

    /// The expiry of a write made at `now_ms`: `explicit` (from
    /// `put_with_ttl`) wins over the default; `None` means never.
    pub fn expiry(
        &self,
        explicit: Option<Duration>,
        now_ms: impl FnOnce() -> u64,
    ) -> Result<Option<u64>> {
        let ttl = match explicit {
            Some(ttl) => Some(ttl_ms(ttl)?),
            None => self.default_ms,
        };
        Ok(ttl.map(|ms| now_ms().saturating_add(ms)))
    }
}

/// True if an entry with this expiry is dead at `now_ms`.
#[inline]
pub fn is_expired(expires_at_ms: u64, now_ms: u64) -> bool {
    now_ms >= expires_at_ms
}

/// A stored value split into its expiry and the user's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredValue<'a> {
    /// When the entry expires, in ms since the epoch; `None` for never.
    pub expires_at_ms: Option<u64>,
    /// The user's value.
    pub value: &'a [u8],
}

impl<'a> StoredValue<'a> {
    /// Parses the stored form. Fails on an empty input or an unknown tag.
    pub fn decode(stored: &'a [u8]) -> Result<Self> {
        match stored.split_first() {
            Some((&TAG_PLAIN, value)) => Ok(StoredValue {
                expires_at_ms: None,
                value,
            }),
            Some((&TAG_EXPIRING, rest)) => match rest.split_first_chunk::<8>() {
                Some((at, value)) => Ok(StoredValue {
                    expires_at_ms: Some(u64::from_le_bytes(*at)),
                    value,
                }),
                None => Err(Error::corrupted(
                    "stored value",
                    1,
                    "expiring value shorter than its 8-byte expiry",
                )),
            },
            Some((&tag, _)) => Err(Error::corrupted(
                "stored value",
                0,
                format!("unknown value tag {tag:#04x}"),
            )),
            None => Err(Error::corrupted("stored value", 0, "empty stored value")),
        }
    }

    /// Reads only the expiry, for compaction filters.
    pub fn expiry_of(stored: &[u8]) -> Result<Option<u64>> {
        StoredValue::decode(stored).map(|s| s.expires_at_ms)
    }

    /// True if the stored value is expired at `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| is_expired(at, now_ms))
    }

    /// Appends the stored form of (`expires_at_ms`, `value`) to `out`.
    pub fn encode_into(expires_at_ms: Option<u64>, value: &[u8], out: &mut Vec<u8>) {
        match expires_at_ms {
            None => {
                out.reserve(PLAIN_HEADER_LEN + value.len());
                out.push(TAG_PLAIN);
            }
            Some(at) => {
                out.reserve(EXPIRING_HEADER_LEN + value.len());
                out.push(TAG_EXPIRING);
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        out.extend_from_slice(value);
    }

    /// The stored form of (`expires_at_ms`, `value`) in a new buffer.
    pub fn encode(expires_at_ms: Option<u64>, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Self::encode_into(expires_at_ms, value, &mut out);
        out
    }
}
