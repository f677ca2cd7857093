//! Input checks shared by every edge that accepts transactions. Each error
//! names the limit it enforces, so a caller knows what to change.

use std::collections::HashSet;

use crate::limits::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("empty key: keys must be 1 to {KEY_BYTES_MAX} bytes")]
    EmptyKey,
    #[error("key of {got} bytes is over KEY_BYTES_MAX ({KEY_BYTES_MAX} bytes)")]
    KeyTooLong { got: usize },
    #[error("value of {got} bytes is over VALUE_BYTES_MAX ({VALUE_BYTES_MAX} bytes)")]
    ValueTooLong { got: usize },
    #[error("transaction touches {got} keys, over TXN_KEYS_MAX ({TXN_KEYS_MAX})")]
    TooManyKeys { got: usize },
    #[error("transaction carries {got} bytes, over TXN_BYTES_MAX ({TXN_BYTES_MAX} bytes)")]
    TxnTooLarge { got: usize },
    #[error("transaction id must be exactly {TXN_ID_BYTES} bytes, got {got}")]
    TxnIdLength { got: usize },
    #[error("key appears twice in the writes of one transaction")]
    DuplicateWrite { key: Vec<u8> },
    #[error("key appears twice in the reads of one transaction")]
    DuplicateRead { key: Vec<u8> },
    #[error("transaction has no reads and no writes")]
    EmptyTxn,
    #[error("Get of {got} keys is over GET_KEYS_MAX ({GET_KEYS_MAX})")]
    TooManyGetKeys { got: usize },
    #[error("scan limit {got} is over SCAN_LIMIT_MAX ({SCAN_LIMIT_MAX})")]
    ScanLimit { got: u32 },
    #[error("{0}")]
    Other(String),
}

/// Checks one key against the key limits.
pub fn key(key: &[u8]) -> Result<(), InputError> {
    if key.is_empty() {
        return Err(InputError::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(InputError::KeyTooLong { got: key.len() });
    }
    Ok(())
}

/// Checks a watched key range `[start, end)` (an empty `end`: no end):
/// each bound within the key limit, and `start` before `end`.
pub fn key_range(start: &[u8], end: &[u8]) -> Result<(), InputError> {
    for (name, bound) in [("start", start), ("end", end)] {
        if bound.len() > KEY_BYTES_MAX {
            return Err(InputError::Other(format!(
                "range {name} of {} bytes is over KEY_BYTES_MAX ({KEY_BYTES_MAX} bytes)",
                bound.len()
            )));
        }
    }
    if !end.is_empty() && start >= end {
        return Err(InputError::Other(
            "the range is empty: its start is not before its end".into(),
        ));
    }
    Ok(())
}

/// Checks one value against the value limit.
pub fn value(value: &[u8]) -> Result<(), InputError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(InputError::ValueTooLong { got: value.len() });
    }
    Ok(())
}

/// Checks the shape of a transaction: keys, values, counts, total bytes, and
/// that no key is written (or read) twice.
pub fn txn<'a>(
    reads: impl IntoIterator<Item = &'a [u8]>,
    writes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<(), InputError> {
    let mut count = 0usize;
    let mut bytes = 0usize;
    let mut seen_reads = HashSet::new();
    for k in reads {
        key(k)?;
        if !seen_reads.insert(k) {
            return Err(InputError::DuplicateRead { key: k.to_vec() });
        }
        count += 1;
        bytes += k.len();
    }
    let mut seen_writes = HashSet::new();
    for (k, v) in writes {
        key(k)?;
        if let Some(v) = v {
            value(v)?;
            bytes += v.len();
        }
        if !seen_writes.insert(k) {
            return Err(InputError::DuplicateWrite { key: k.to_vec() });
        }
        count += 1;
        bytes += k.len();
    }
    if count == 0 {
        return Err(InputError::EmptyTxn);
    }
    if count > TXN_KEYS_MAX {
        return Err(InputError::TooManyKeys { got: count });
    }
    if bytes > TXN_BYTES_MAX {
        return Err(InputError::TxnTooLarge { got: bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_in_errors() {
        assert!(key(b"").unwrap_err().to_string().contains("empty key"));
        let long = vec![b'k'; KEY_BYTES_MAX + 1];
        assert!(
            key(&long)
                .unwrap_err()
                .to_string()
                .contains("KEY_BYTES_MAX")
        );
        let big = vec![0; VALUE_BYTES_MAX + 1];
        assert!(
            value(&big)
                .unwrap_err()
                .to_string()
                .contains("VALUE_BYTES_MAX")
        );
        assert!(key(&vec![b'k'; KEY_BYTES_MAX]).is_ok());
    }

    #[test]
    fn txn_shape_is_checked() {
        let ok = txn([&b"a"[..]], [(&b"b"[..], Some(&b"1"[..]))]);
        assert_eq!(ok, Ok(()));
        let dup = txn([], [(&b"b"[..], Some(&b"1"[..])), (&b"b"[..], None)]);
        assert!(matches!(dup, Err(InputError::DuplicateWrite { .. })));
        assert_eq!(txn([], []), Err(InputError::EmptyTxn));
        let keys: Vec<Vec<u8>> = (0..=TXN_KEYS_MAX)
            .map(|i| i.to_string().into_bytes())
            .collect();
        let many = txn(keys.iter().map(|k| k.as_slice()), []);
        assert!(matches!(many, Err(InputError::TooManyKeys { .. })));
        let v = vec![0; VALUE_BYTES_MAX];
        let names: Vec<Vec<u8>> = (0..5).map(|i| vec![b'a' + i]).collect();
        let fat = txn([], names.iter().map(|k| (k.as_slice(), Some(v.as_slice()))));
        assert!(matches!(fat, Err(InputError::TxnTooLarge { .. })));
    }
}
