//! Test-only GGUF writer: builds valid little-endian GGUF v2/v3 files from values and
//! tensor specs, with escape hatches (raw kv payloads, explicit tensor offsets, a forced
//! data length) for building hostile ones. Tensor data is a deterministic fill so tests
//! can check `tensor_data` returns the right bytes.

use tessera::model::gguf::{GgufError, GgufFile, GgufValue};

pub(crate) enum Kv {
    Value(GgufValue),
    /// A value type id and its payload bytes, written verbatim (for hostile values).
    Raw {
        type_id: u32,
        payload: Vec<u8>,
    },
}

pub(crate) struct TensorSpec {
    pub(crate) name: String,
    pub(crate) dims: Vec<u64>,
    pub(crate) type_id: u32,
    /// `None`: placed after the previous tensor at the next aligned offset, with data.
    pub(crate) offset: Option<u64>,
}

pub(crate) struct Builder {
    pub(crate) version: u32,
    /// Alignment the writer pads with (set `general.alignment` separately to change the
    /// parser's view).
    pub(crate) alignment: usize,
    pub(crate) kvs: Vec<(String, Kv)>,
    pub(crate) tensors: Vec<TensorSpec>,
    /// Data section length; default: up to the end of the last auto-placed tensor.
    pub(crate) data_len: Option<usize>,
}

/// (block size, bytes per block) for the ggml types the tests write.
pub(crate) fn block_layout(type_id: u32) -> (u64, u64) {
    match type_id {
        0 => (1, 4),
        1 => (1, 2),
        3 => (32, 20),
        8 => (32, 34),
        12 => (256, 144),
        _ => (1, 1),
    }
}

pub(crate) fn spec_size(spec: &TensorSpec) -> usize {
    let (block, bytes) = block_layout(spec.type_id);
    let elems: u64 = spec.dims.iter().product();
    (elems / block * bytes) as usize
}

pub(crate) fn type_id_of(value: &GgufValue) -> u32 {
    match value {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(crate) fn put_payload(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(v) => put_str(out, v),
        GgufValue::Array(items) => {
            let elem_type = items.first().map_or(0, type_id_of);
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_payload(out, item);
            }
        }
    }
}

/// Deterministic filler so tests can check `tensor_data` returns the right bytes.
pub(crate) fn tensor_fill(tensor_index: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 + tensor_index * 31) as u8)
        .collect()
}

impl Builder {
    pub(crate) fn new() -> Self {
        Builder {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
            data_len: None,
        }
    }

    pub(crate) fn kv(mut self, key: &str, value: GgufValue) -> Self {
        self.kvs.push((key.to_owned(), Kv::Value(value)));
        self
    }

    pub(crate) fn raw_kv(mut self, key: &str, type_id: u32, payload: Vec<u8>) -> Self {
        self.kvs
            .push((key.to_owned(), Kv::Raw { type_id, payload }));
        self
    }

    pub(crate) fn tensor(mut self, name: &str, dims: &[u64], type_id: u32) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            type_id,
            offset: None,
        });
        self
    }

    pub(crate) fn tensor_at(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            type_id,
            offset: Some(offset),
        });
        self
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, kv) in &self.kvs {
            put_str(&mut out, key);
            match kv {
                Kv::Value(value) => {
                    out.extend_from_slice(&type_id_of(value).to_le_bytes());
                    put_payload(&mut out, value);
                }
                Kv::Raw { type_id, payload } => {
                    out.extend_from_slice(&type_id.to_le_bytes());
                    out.extend_from_slice(payload);
                }
            }
        }
        let mut data = Vec::new();
        for (index, spec) in self.tensors.iter().enumerate() {
            let offset = spec.offset.unwrap_or_else(|| {
                data.resize(data.len().next_multiple_of(self.alignment), 0);
                let start = data.len();
                data.extend(tensor_fill(index, spec_size(spec)));
                start as u64
            });
            put_str(&mut out, &spec.name);
            out.extend_from_slice(&(spec.dims.len() as u32).to_le_bytes());
            for dim in &spec.dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&spec.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        data.resize(self.data_len.unwrap_or(data.len()), 0);
        out.extend(data);
        out
    }
}

/// A small valid file exercising every value type, nesting and three tensor types.
pub(crate) fn sample_values() -> Vec<(&'static str, GgufValue)> {
    use GgufValue::*;
    vec![
        ("general.architecture", String("llama".into())),
        ("t.u8", U8(200)),
        ("t.i8", I8(-100)),
        ("t.u16", U16(60_000)),
        ("t.i16", I16(-30_000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f32", F32(1.5e-5)),
        ("t.f64", F64(-2.25)),
        ("t.bool", Bool(true)),
        ("t.string", String("héllo ✓".into())),
        ("t.empty_string", String("".into())),
        (
            "t.tokens",
            Array(vec![String("<s>".into()), String("Ġa".into())]),
        ),
        ("t.token_type", Array(vec![I32(1), I32(-3), I32(6)])),
        ("t.scores", Array(vec![F32(0.5), F32(-1.0)])),
        ("t.bytes", Array(vec![U8(0), U8(255)])),
        (
            "t.nested",
            Array(vec![Array(vec![U16(1)]), Array(vec![U16(2), U16(3)])]),
        ),
        ("t.empty_array", Array(vec![])),
    ]
}

pub(crate) fn sample_builder() -> Builder {
    let mut builder = Builder::new();
    for (key, value) in sample_values() {
        builder = builder.kv(key, value);
    }
    builder
        .tensor("token_embd.weight", &[64, 3], 8)
        .tensor("blk.0.attn_norm.weight", &[5], 0)
        .tensor("blk.0.attn_q.weight", &[32, 2], 3)
}

pub(crate) fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

pub(crate) fn expect_err(bytes: Vec<u8>) -> GgufError {
    match parse(bytes) {
        Ok(file) => panic!("expected an error, parsed {file:?}"),
        Err(err) => err,
    }
}
