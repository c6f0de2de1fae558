//! Typed metadata lookups on `GgufFile`.
//!
//! Conversion rules: integer getters accept every integer variant whose value fits the
//! target (a u32 hyperparameter stored as i32 or u64 is fine; -1 or 2^40 is
//! `ValueOutOfRange`); float getters accept F32 and F64 (an F64 outside f32's range is
//! `ValueOutOfRange`). `get_*` fail with `MissingKey` on an absent key; `opt_*` return
//! `Ok(None)` there. A present key of the wrong type is always `WrongType`, naming the key
//! (`key[i]` for an array element), the expected and the stored type.

use super::{GgufError, GgufFile, GgufValue};

impl GgufFile {
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        integer(key, self.require(key)?, "u32")
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        integer(key, self.require(key)?, "u64")
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        float(key, self.require(key)?)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            GgufValue::Bool(flag) => Ok(*flag),
            other => Err(wrong_type(key, "bool", other)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "string", value))
    }

    /// A string array, e.g. `tokenizer.ggml.tokens`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .ok_or_else(|| wrong_type(&format!("{key}[{i}]"), "string", item))
            })
            .collect()
    }

    /// An integer array whose elements all fit in i32, e.g. `tokenizer.ggml.token_type`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| integer(&format!("{key}[{i}]"), item, "i32"))
            .collect()
    }

    /// A float array, e.g. `tokenizer.ggml.scores`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, item)| float(&format!("{key}[{i}]"), item))
            .collect()
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.optional(key, Self::get_u32)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.optional(key, Self::get_u64)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.optional(key, Self::get_f32)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.optional(key, Self::get_bool)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.optional(key, Self::get_str)
    }

    /// `general.architecture`, e.g. "llama" or "qwen2".
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    fn array(&self, key: &str) -> Result<&[GgufValue], GgufError> {
        let value = self.require(key)?;
        value
            .as_array()
            .ok_or_else(|| wrong_type(key, "array", value))
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        getter: impl FnOnce(&'a Self, &str) -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        getter(self, key).map(Some)
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &GgufValue) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.type_name(),
    }
}

/// Any integer variant converted to `T` if the value fits.
fn integer<T: TryFrom<i128>>(
    key: &str,
    value: &GgufValue,
    expected: &'static str,
) -> Result<T, GgufError> {
    let wide = value
        .as_integer()
        .ok_or_else(|| wrong_type(key, expected, value))?;
    T::try_from(wide).map_err(|_| GgufError::ValueOutOfRange {
        key: key.to_owned(),
        expected,
        value: wide.to_string(),
    })
}

/// F32, or F64 narrowed to f32 when it stays finite (NaN and ±inf pass through as stored).
fn float(key: &str, value: &GgufValue) -> Result<f32, GgufError> {
    let wide = value
        .as_float()
        .ok_or_else(|| wrong_type(key, "f32", value))?;
    let narrow = wide as f32;
    if wide.is_finite() && !narrow.is_finite() {
        return Err(GgufError::ValueOutOfRange {
            key: key.to_owned(),
            expected: "f32",
            value: wide.to_string(),
        });
    }
    Ok(narrow)
}
