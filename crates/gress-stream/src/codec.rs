//! How typed values become bytes in a backend.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Encodes and decodes values of one type.
pub trait Codec<T>: Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`.
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<()>;
    /// Decodes one value.
    fn decode(&self, bytes: &[u8]) -> Result<T>;
}

/// serde through `postcard`: compact, stable, and maintained.
pub struct Postcard<T>(PhantomData<fn() -> T>);

impl<T> Default for Postcard<T> {
    fn default() -> Self {
        Postcard(PhantomData)
    }
}

impl<T> std::fmt::Debug for Postcard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Postcard<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Codec<T> for Postcard<T> {
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let bytes =
            postcard::to_stdvec(value).map_err(|e| Error::codec(std::any::type_name::<T>(), e))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| Error::codec(std::any::type_name::<T>(), e))
    }
}
