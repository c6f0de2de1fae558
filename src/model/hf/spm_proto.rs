//! A SentencePiece `tokenizer.model` (protobuf `sentencepiece.ModelProto`) read into
//! `SpmModel`: the pieces (text, score, type) and the flags the loader needs.
//!
//! Fields read (sentencepiece_model.proto): ModelProto `pieces` = 1,
//! `trainer_spec` = 2, `normalizer_spec` = 3; SentencePiece `piece` = 1, `score` = 2,
//! `type` = 3 (default NORMAL); TrainerSpec `model_type` = 3 (default UNIGRAM),
//! `byte_fallback` = 35 (default false); NormalizerSpec `add_dummy_prefix` = 3 (default
//! true). Every other field is skipped by its wire type. A truncated or malformed
//! message is an error naming the byte offset, never a panic.

use crate::model::tokenizer::token_type;

/// `TrainerSpec.ModelType.BPE`.
pub const MODEL_TYPE_BPE: u64 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct SpmPiece {
    pub text: String,
    pub score: f32,
    /// `ModelProto.SentencePiece.Type`: 1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte; the same numbers as GGUF's [`token_type`] (llama.cpp took them
    /// from SentencePiece).
    pub kind: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<SpmPiece>,
    /// `TrainerSpec.model_type` (1 unigram, 2 BPE, 3 word, 4 char).
    pub model_type: u64,
    pub byte_fallback: bool,
    pub add_dummy_prefix: bool,
}

/// One field of a message: its number and its value by wire type.
enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A cursor over one protobuf message; `base` is its offset in the file (for errors).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Self {
        Self {
            bytes,
            pos: 0,
            base,
        }
    }

    fn error(&self, what: &str) -> String {
        format!(
            "malformed protobuf at byte {}: {what}",
            self.base + self.pos
        )
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.error("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.error(&format!("field of {n} bytes runs past the end")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next (field number, value, offset of the value), or `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>, usize)>, String> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let at = self.base + self.pos;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                Field::Bytes(self.take(len)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or([0; 4]),
            )),
            wire => return Err(self.error(&format!("unsupported wire type {wire}"))),
        };
        Ok(Some((key >> 3, field, at)))
    }
}

/// Parses the bytes of a `tokenizer.model`.
pub fn parse_model(bytes: &[u8]) -> Result<SpmModel, String> {
    let mut model = SpmModel {
        pieces: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        add_dummy_prefix: true,
    };
    let mut reader = Reader::new(bytes, 0);
    while let Some((number, field, at)) = reader.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => model.pieces.push(parse_piece(b, at)?),
            (2, Field::Bytes(b)) => parse_trainer(b, at, &mut model)?,
            (3, Field::Bytes(b)) => parse_normalizer(b, at, &mut model)?,
            (1..=3, _) => return Err(format!("field {number} at byte {at} is not a message")),
            _ => {}
        }
    }
    Ok(model)
}

fn parse_piece(bytes: &[u8], base: usize) -> Result<SpmPiece, String> {
    let mut piece = SpmPiece {
        text: String::new(),
        score: 0.0,
        kind: token_type::NORMAL,
    };
    let mut reader = Reader::new(bytes, base);
    while let Some((number, field, at)) = reader.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                piece.text = String::from_utf8(b.to_vec())
                    .map_err(|_| format!("piece text at byte {at} is not UTF-8"))?;
            }
            (2, Field::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Field::Varint(v)) => {
                piece.kind = i32::try_from(v)
                    .ok()
                    .filter(|k| (token_type::NORMAL..=token_type::BYTE).contains(k))
                    .ok_or_else(|| format!("piece type {v} at byte {at} is not 1..6"))?;
            }
            (1..=3, _) => {
                return Err(format!(
                    "piece field {number} at byte {at} has the wrong wire type"
                ))
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer(bytes: &[u8], base: usize, model: &mut SpmModel) -> Result<(), String> {
    let mut reader = Reader::new(bytes, base);
    while let Some((number, field, _)) = reader.next_field()? {
        match (number, field) {
            (3, Field::Varint(v)) => model.model_type = v,
            (35, Field::Varint(v)) => model.byte_fallback = v != 0,
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer(bytes: &[u8], base: usize, model: &mut SpmModel) -> Result<(), String> {
    let mut reader = Reader::new(bytes, base);
    while let Some((number, field, _)) = reader.next_field()? {
        if let (3, Field::Varint(v)) = (number, field) {
            model.add_dummy_prefix = v != 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn message(number: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = Vec::new();
        message(1, text.as_bytes(), &mut p);
        p.push(2 << 3 | 5);
        p.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut p);
        varint(kind, &mut p);
        p
    }

    #[test]
    fn reads_pieces_and_flags() {
        let mut file = Vec::new();
        message(1, &piece("<unk>", 0.0, 2), &mut file);
        message(1, &piece("\u{2581}a", -1.5, 1), &mut file);
        let mut trainer = Vec::new();
        varint(3 << 3, &mut trainer);
        varint(2, &mut trainer);
        varint(35 << 3, &mut trainer);
        varint(1, &mut trainer);
        message(2, &trainer, &mut file);
        message(3, &[3 << 3, 0], &mut file);
        let model = parse_model(&file).expect("valid");
        assert_eq!(model.pieces.len(), 2);
        assert_eq!(model.pieces[1].text, "\u{2581}a");
        assert_eq!(model.pieces[1].score, -1.5);
        assert_eq!(model.pieces[0].kind, token_type::UNKNOWN);
        assert_eq!(model.model_type, MODEL_TYPE_BPE);
        assert!(model.byte_fallback && !model.add_dummy_prefix);
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let mut file = Vec::new();
        message(1, &piece("abc", 1.0, 1), &mut file);
        for cut in 1..file.len() {
            assert!(parse_model(&file[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_model(&[0x0b]).unwrap_err().contains("wire type"));
        assert!(parse_model(&[0xff; 12]).is_err());
    }
}
