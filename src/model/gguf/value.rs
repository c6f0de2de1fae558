//! `GgufValue`: one metadata value, and the reader that decodes values from the file.
//!
//! Invariants of the reader: an array's length is checked against the bytes left in the
//! file (length × the element type's minimum encoded size) and against a whole-file value
//! budget BEFORE its vector is reserved (fallibly); arrays nest at most `MAX_ARRAY_DEPTH`
//! deep; unknown type ids and bool bytes other than 0/1 are errors. So the memory a file
//! can make us allocate is bounded by its own size and by `MAX_METADATA_VALUES`.

use super::error::GgufError;
use super::reader::{Cursor, Named};

/// Deepest array nesting accepted (an array of arrays is depth 2).
pub(crate) const MAX_ARRAY_DEPTH: usize = 4;
/// Most values (scalars plus array elements) one file's metadata may hold. A 262k-token
/// vocabulary with scores and token types is ~0.8M; this leaves 20× headroom while capping
/// the decoded metadata at ~0.5 GiB whatever the file claims.
pub(crate) const MAX_METADATA_VALUES: u64 = 1 << 24;

/// One metadata value, as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF type name of this value ("u32", "string", "array", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }

    /// Any integer variant widened losslessly; `None` for floats, bools, strings, arrays.
    pub fn as_integer(&self) -> Option<i128> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v.into()),
            _ => None,
        }
    }

    /// F32 or F64 widened to f64; `None` for every other variant.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// The GGUF value type ids (`gguf_type` in llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub(crate) fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Fewest bytes one value of this type occupies in the file: scalars their size, a
    /// string its u64 length, an array its u32 element type plus u64 length.
    pub(crate) fn min_encoded_bytes(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

/// Decodes metadata values while charging every value against `MAX_METADATA_VALUES`.
pub(crate) struct ValueReader {
    values_left: u64,
}

impl ValueReader {
    pub(crate) fn new() -> Self {
        ValueReader {
            values_left: MAX_METADATA_VALUES,
        }
    }

    /// Reads one top-level value of type id `type_id` for metadata key `key`.
    pub(crate) fn read(
        &mut self,
        cursor: &mut Cursor<'_>,
        type_id: u32,
        key: &str,
    ) -> Result<GgufValue, GgufError> {
        let value_type =
            ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_owned(),
                type_id,
            })?;
        self.charge(1, key)?;
        self.read_typed(cursor, value_type, key, 0)
    }

    fn charge(&mut self, count: u64, key: &str) -> Result<(), GgufError> {
        self.values_left =
            self.values_left
                .checked_sub(count)
                .ok_or_else(|| GgufError::MetadataTooLarge {
                    key: key.to_owned(),
                    limit: MAX_METADATA_VALUES,
                })?;
        Ok(())
    }

    /// `depth` is the number of arrays enclosing this value.
    fn read_typed(
        &mut self,
        cursor: &mut Cursor<'_>,
        value_type: ValueType,
        key: &str,
        depth: usize,
    ) -> Result<GgufValue, GgufError> {
        let field = || format!("{} value of `{key}`", value_type.name());
        Ok(match value_type {
            ValueType::U8 => GgufValue::U8(cursor.u8().named(field)?),
            ValueType::I8 => GgufValue::I8(cursor.i8().named(field)?),
            ValueType::U16 => GgufValue::U16(cursor.u16().named(field)?),
            ValueType::I16 => GgufValue::I16(cursor.i16().named(field)?),
            ValueType::U32 => GgufValue::U32(cursor.u32().named(field)?),
            ValueType::I32 => GgufValue::I32(cursor.i32().named(field)?),
            ValueType::U64 => GgufValue::U64(cursor.u64().named(field)?),
            ValueType::I64 => GgufValue::I64(cursor.i64().named(field)?),
            ValueType::F32 => GgufValue::F32(cursor.f32().named(field)?),
            ValueType::F64 => GgufValue::F64(cursor.f64().named(field)?),
            ValueType::Bool => match cursor.u8().named(field)? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                byte => {
                    return Err(GgufError::InvalidBool {
                        key: key.to_owned(),
                        byte,
                    })
                }
            },
            ValueType::String => GgufValue::String(cursor.str().named(field)?.to_owned()),
            ValueType::Array => self.read_array(cursor, key, depth + 1)?,
        })
    }

    /// Reads an array body (element type, length, elements) nested `depth` arrays deep.
    fn read_array(
        &mut self,
        cursor: &mut Cursor<'_>,
        key: &str,
        depth: usize,
    ) -> Result<GgufValue, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                key: key.to_owned(),
                depth,
                limit: MAX_ARRAY_DEPTH,
            });
        }
        let elem_id = cursor
            .u32()
            .named(|| format!("element type of array `{key}`"))?;
        let elem_type = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_owned(),
            type_id: elem_id,
        })?;
        let len = cursor.u64().named(|| format!("length of array `{key}`"))?;
        let remaining = cursor.remaining() as u64;
        let max = remaining / elem_type.min_encoded_bytes();
        if len > max {
            return Err(GgufError::ArrayTooLong {
                key: key.to_owned(),
                len,
                elem_type: elem_type.name(),
                max,
                remaining,
            });
        }
        self.charge(len, key)?;
        // `len <= remaining bytes`, so it fits in usize.
        let len = len as usize;
        let mut items = Vec::new();
        items
            .try_reserve_exact(len)
            .map_err(|_| GgufError::AllocationFailed {
                what: format!("array `{key}`"),
                count: len as u64,
            })?;
        for _ in 0..len {
            items.push(self.read_typed(cursor, elem_type, key, depth)?);
        }
        Ok(GgufValue::Array(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array_bytes(elem_type: u32, len: u64, body: &[u8]) -> Vec<u8> {
        let mut bytes = elem_type.to_le_bytes().to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn reads_an_array_of_strings() {
        let mut body = Vec::new();
        for word in ["a", "bc"] {
            body.extend_from_slice(&(word.len() as u64).to_le_bytes());
            body.extend_from_slice(word.as_bytes());
        }
        let bytes = array_bytes(8, 2, &body);
        let value = ValueReader::new()
            .read(&mut Cursor::new(&bytes), 9, "k")
            .unwrap();
        let expected = GgufValue::Array(vec![
            GgufValue::String("a".into()),
            GgufValue::String("bc".into()),
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn array_length_is_bounded_by_remaining_bytes() {
        // 3 u32 elements need 12 bytes; only 8 are present.
        let bytes = array_bytes(4, 3, &[0; 8]);
        let err = ValueReader::new()
            .read(&mut Cursor::new(&bytes), 9, "k")
            .unwrap_err();
        assert!(
            matches!(err, GgufError::ArrayTooLong { len: 3, max: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_rejected() {
        // MAX_ARRAY_DEPTH + 1 nested arrays of one element each, innermost empty u8 array.
        let mut bytes = Vec::new();
        for _ in 0..MAX_ARRAY_DEPTH {
            bytes.extend_from_slice(&array_bytes(9, 1, &[]));
        }
        bytes.extend_from_slice(&array_bytes(0, 0, &[]));
        let err = ValueReader::new()
            .read(&mut Cursor::new(&bytes), 9, "deep")
            .unwrap_err();
        assert!(matches!(err, GgufError::ArrayTooDeep { .. }), "{err}");

        let shallow = &bytes[12..];
        assert!(ValueReader::new()
            .read(&mut Cursor::new(shallow), 9, "ok")
            .is_ok());
    }

    #[test]
    fn value_budget_caps_total_elements() {
        let mut reader = ValueReader::new();
        reader.values_left = 3;
        let bytes = array_bytes(0, 3, &[1, 2, 3]);
        let err = reader.read(&mut Cursor::new(&bytes), 9, "k").unwrap_err();
        assert!(matches!(err, GgufError::MetadataTooLarge { .. }), "{err}");
    }

    #[test]
    fn bad_bool_and_unknown_type_are_rejected() {
        let err = ValueReader::new()
            .read(&mut Cursor::new(&[2]), 7, "flag")
            .unwrap_err();
        assert!(
            matches!(err, GgufError::InvalidBool { byte: 2, .. }),
            "{err}"
        );
        let err = ValueReader::new()
            .read(&mut Cursor::new(&[0; 8]), 13, "x")
            .unwrap_err();
        assert!(
            matches!(err, GgufError::UnknownValueType { type_id: 13, .. }),
            "{err}"
        );
    }
}
