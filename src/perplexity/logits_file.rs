//! llama-perplexity's file of saved log-probabilities (`--kl-divergence-base FILE`),
//! byte for byte, so either tool reads the other's: the magic `_logits_`, then `n_ctx`,
//! `n_vocab`, `n_chunk` (i32, little-endian), the evaluated tokens (`n_chunk * n_ctx`
//! i32, as tokenized: BOS is put in place of each chunk's first token at evaluation),
//! then per chunk and per scored position (`n_ctx - 1 - n_ctx/2` of them) one record of
//! `2 * ((n_vocab + 1) / 2) + 4` u16: `scale` and `min_log_prob` as two f32, then every
//! token's log-probability as `min_log_prob + scale * q` with `q` in 0..=65535 (the
//! range is the row's top 16 nats; anything below is `q = 0`), padded to an even count.

use std::io::{self, Read, Write};

use crate::request::TokenId;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"_logits_";

/// Log-probabilities more than this far below the row's best are stored as the floor.
const RANGE_NATS: f32 = 16.0;

/// u16 per record for a vocabulary of `n_vocab`: the two f32, the row, an even pad.
pub fn record_u16s(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// What precedes the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `[n_chunk * n_ctx]`: the evaluated tokens, chunk after chunk.
    pub tokens: Vec<TokenId>,
}

/// One position's row of log-probabilities, quantized as llama-perplexity stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub scale: f32,
    pub min_log_prob: f32,
    /// `[n_vocab]`
    pub q: Vec<u16>,
}

impl Record {
    /// Quantizes `logprobs: [n_vocab]` (log-softmax of one row) as llama-perplexity's
    /// `log_softmax` does with the row's logits: the floor is the row's minimum, raised to
    /// 16 nats below its best; `q` is rounded to nearest, ties to even.
    pub fn quantize(logprobs: &[f32]) -> Self {
        let best = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lowest = logprobs.iter().copied().fold(f32::INFINITY, f32::min);
        let floor = lowest.max(best - RANGE_NATS);
        let scale = (best - floor) / 65535.0;
        let q = if scale > 0.0 {
            let inv_scale = 1.0 / scale;
            logprobs
                .iter()
                .map(|&lp| match lp > floor {
                    true => (inv_scale * (lp - floor)).round_ties_even() as u16,
                    false => 0,
                })
                .collect()
        } else {
            vec![0; logprobs.len()]
        };
        Self {
            scale,
            min_log_prob: floor,
            q,
        }
    }

    /// The stored log-probability of `token`.
    pub fn log_prob(&self, token: usize) -> f32 {
        self.scale * f32::from(self.q[token]) + self.min_log_prob
    }
}

/// Writes a file: the header at creation, then one record per scored position.
pub struct LogitsWriter<W: Write> {
    out: W,
    n_vocab: usize,
}

impl<W: Write> LogitsWriter<W> {
    pub fn create(mut out: W, header: &Header) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        for n in [header.n_ctx, header.n_vocab, header.n_chunk] {
            out.write_all(&i32_of(n)?.to_le_bytes())?;
        }
        for &t in &header.tokens {
            out.write_all(&(t as i32).to_le_bytes())?;
        }
        Ok(Self {
            out,
            n_vocab: header.n_vocab,
        })
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        if record.q.len() != self.n_vocab {
            return Err(io::Error::other(format!(
                "a row of {} log-probabilities for a file of n_vocab {}",
                record.q.len(),
                self.n_vocab
            )));
        }
        let mut bytes = Vec::with_capacity(2 * record_u16s(self.n_vocab));
        bytes.extend_from_slice(&record.scale.to_le_bytes());
        bytes.extend_from_slice(&record.min_log_prob.to_le_bytes());
        for q in &record.q {
            bytes.extend_from_slice(&q.to_le_bytes());
        }
        bytes.resize(2 * record_u16s(self.n_vocab), 0);
        self.out.write_all(&bytes)
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn i32_of(n: usize) -> io::Result<i32> {
    i32::try_from(n).map_err(|_| io::Error::other(format!("{n} does not fit the file's i32")))
}

/// Reads a file: the header at opening, then the records in order.
pub struct LogitsReader<R: Read> {
    input: R,
    pub header: Header,
}

impl<R: Read> LogitsReader<R> {
    pub fn open(mut input: R) -> Result<Self, String> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| format!("reading the magic: {e}"))?;
        if &magic != MAGIC {
            return Err("not a file of saved log-probabilities (no `_logits_` magic)".into());
        }
        let mut field = |name: &str| -> Result<usize, String> {
            let mut b = [0u8; 4];
            input
                .read_exact(&mut b)
                .map_err(|e| format!("reading {name}: {e}"))?;
            let v = i32::from_le_bytes(b);
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or(format!("{name} is {v}"))
        };
        let (n_ctx, n_vocab, n_chunk) = (field("n_ctx")?, field("n_vocab")?, field("n_chunk")?);
        if n_ctx < 4 || n_vocab > 1 << 24 || n_chunk.saturating_mul(n_ctx) > 1 << 28 {
            return Err(format!(
                "implausible header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
            ));
        }
        let mut raw = vec![0u8; 4 * n_chunk * n_ctx];
        input
            .read_exact(&mut raw)
            .map_err(|e| format!("reading the {} tokens: {e}", n_chunk * n_ctx))?;
        let tokens = raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map(|t| TokenId::try_from(t).map_err(|_| format!("token id {t}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            input,
            header: Header {
                n_ctx,
                n_vocab,
                n_chunk,
                tokens,
            },
        })
    }

    pub fn read(&mut self) -> Result<Record, String> {
        let n_vocab = self.header.n_vocab;
        let mut bytes = vec![0u8; 2 * record_u16s(n_vocab)];
        self.input
            .read_exact(&mut bytes)
            .map_err(|e| format!("reading a row of log-probabilities: {e}"))?;
        let f32_at =
            |i: usize| f32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let q = bytes[8..8 + 2 * n_vocab]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok(Record {
            scale: f32_at(0),
            min_log_prob: f32_at(4),
            q,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n_vocab: usize) -> Header {
        Header {
            n_ctx: 4,
            n_vocab,
            n_chunk: 2,
            tokens: (0..8).collect(),
        }
    }

    #[test]
    fn quantized_rows_read_back_within_half_a_step() {
        let row = [-0.1f32, -3.5, -20.0, f32::NEG_INFINITY, -16.2, -2.25];
        let rec = Record::quantize(&row);
        assert_eq!(rec.min_log_prob, -0.1 - 16.0);
        assert_eq!((rec.q[0], rec.q[2], rec.q[3], rec.q[4]), (65535, 0, 0, 0));
        for &i in &[1usize, 5] {
            assert!((rec.log_prob(i) - row[i]).abs() <= rec.scale * 0.5 + 1e-6);
        }
        let flat = Record::quantize(&[-0.7f32; 3]);
        assert_eq!((flat.scale, flat.q.clone()), (0.0, vec![0, 0, 0]));
    }

    #[test]
    fn files_round_trip_with_llama_perplexitys_layout() {
        for n_vocab in [5usize, 6] {
            let mut bytes = Vec::new();
            let mut w = LogitsWriter::create(&mut bytes, &header(n_vocab)).expect("header");
            let rec = Record::quantize(&vec![-1.0f32; n_vocab]);
            w.write(&rec).expect("row");
            w.finish().expect("flush");
            assert_eq!(&bytes[..8], MAGIC);
            assert_eq!(bytes.len(), 8 + 12 + 4 * 8 + 2 * record_u16s(n_vocab));
            assert_eq!(record_u16s(n_vocab), 2 * n_vocab.div_ceil(2) + 4);
            let mut r = LogitsReader::open(bytes.as_slice()).expect("opens");
            assert_eq!(r.header, header(n_vocab));
            assert_eq!(r.read().expect("row"), rec);
            assert!(r.read().unwrap_err().contains("reading a row"));
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let err = |bytes: &[u8]| LogitsReader::open(bytes).err().expect("refused");
        assert!(err(b"_nope___").contains("magic"));
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&(-4i32).to_le_bytes());
        assert!(err(&bad).contains("n_ctx is -4"));
        let mut short = MAGIC.to_vec();
        for v in [4i32, 10, 2] {
            short.extend_from_slice(&v.to_le_bytes());
        }
        assert!(err(&short).contains("reading the 8 tokens"));
        let mut w = LogitsWriter::create(Vec::new(), &header(3)).expect("header");
        assert!(w.write(&Record::quantize(&[0.0; 4])).is_err());
    }
}
