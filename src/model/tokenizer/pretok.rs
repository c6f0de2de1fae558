//! Byte-level BPE pre-tokenizer selection: `tokenizer.ggml.pre` → the regex sequence
//! llama.cpp (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`) splits text with, plus the
//! per-family switches it sets next to it.
//!
//! Invariant: every regex here is llama.cpp's expression verbatim (already rewritten by
//! llama.cpp to avoid `(?i:...)`), applied in order: each one splits every piece the
//! previous ones produced, keeping both matches and the gaps between them (tokenizers'
//! `Split` with `Isolated` behaviour is exactly llama.cpp's `unicode_regex_split`).

use super::TokenizerError;

/// GPT-2's split: contractions, letters, digits, other symbols, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3 (tiktoken cl100k style): digits in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: like Llama 3 but one digit per piece.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5: Qwen2 with combining marks kept inside words.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// BLOOM / Poro: split on whitespace and a few punctuation marks.
const BLOOM: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+";

/// DeepSeek's CJK + Hangul run, `[一-龥ࠀ-一가-퟿]+`, with the Unicode whitespace inside
/// U+0800..U+4E00 (U+1680, U+2000-200A, U+2028/9, U+202F, U+205F, U+3000) cut out of the
/// ranges: llama.cpp maps non-ASCII whitespace to `\v` before running such regexes, so
/// there those characters only ever match `\s`. (Same reason the DeepSeek-LLM punctuation
/// class below starts at U+3001, not U+3000.)
const HAN_HANGUL: &str = "[\u{4E00}-\u{9FA5}\u{800}-\u{167F}\u{1681}-\u{1FFF}\u{200B}-\u{2027}\u{202A}-\u{202E}\u{2030}-\u{205E}\u{2060}-\u{2FFF}\u{3001}-\u{4E00}\u{AC00}-\u{D7FF}]+";

/// How a byte-level BPE vocab pre-tokenizes, and the llama.cpp switches tied to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreTokenizerSpec {
    /// Regexes applied in order (see the module header).
    pub regexes: Vec<&'static str>,
    /// A pre-tokenized piece that is itself a vocab entry becomes that one token,
    /// without running merges (llama.cpp `ignore_merges`).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the file does not say.
    pub default_add_bos: bool,
}

impl PreTokenizerSpec {
    fn new(regexes: &[&'static str]) -> Self {
        Self {
            regexes: regexes.to_vec(),
            ignore_merges: false,
            default_add_bos: false,
        }
    }

    fn llama3() -> Self {
        Self {
            regexes: vec![LLAMA3],
            ignore_merges: true,
            default_add_bos: true,
        }
    }
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None` = key absent, which
/// llama.cpp treats as "default" with a quality warning).
pub fn pre_tokenizer_spec(pre: Option<&str>) -> Result<PreTokenizerSpec, TokenizerError> {
    let name = pre.unwrap_or("default");
    let spec = match name {
        "default" => PreTokenizerSpec::new(&[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => PreTokenizerSpec::llama3(),
        "dbrx" | "smaug-bpe" => PreTokenizerSpec::new(&[LLAMA3]),
        "deepseek-llm" => PreTokenizerSpec::new(&[
            "[\r\n]",
            "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
            "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3001}-\u{3002}]+",
            "\\s+$",
            HAN_HANGUL,
            "\\p{N}+",
        ]),
        "deepseek-coder" => PreTokenizerSpec::new(&[
            "[\r\n]",
            "\\s?\\p{L}+",
            "\\s?\\p{P}+",
            HAN_HANGUL,
            "\\p{N}",
        ]),
        "falcon" => PreTokenizerSpec::new(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => PreTokenizerSpec::new(&[r"\p{N}", GPT2]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "mpt" | "olmo" | "jais" | "exaone4" | "trillion"
        | "granite-docling" => PreTokenizerSpec::new(&[GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => PreTokenizerSpec::new(&[QWEN2]),
        "qwen35" => PreTokenizerSpec::new(&[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => PreTokenizerSpec::new(&[BLOOM]),
        "viking" => PreTokenizerSpec::new(&[BLOOM, r"\p{N}"]),
        other => {
            return Err(TokenizerError::UnsupportedPreTokenizer {
                pre: other.to_owned(),
            })
        }
    };
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pre_is_default_and_unknown_pre_is_named_in_the_error() {
        let default = pre_tokenizer_spec(None).expect("default pre-tokenizer");
        assert_eq!(default.regexes.len(), 4);
        let err = pre_tokenizer_spec(Some("no-such-pre")).expect_err("unknown pre must fail");
        assert!(err.to_string().contains("no-such-pre"), "{err}");
    }

    #[test]
    fn llama3_family_ignores_merges_and_adds_bos() {
        let spec = pre_tokenizer_spec(Some("llama-bpe")).expect("llama-bpe");
        assert!(spec.ignore_merges && spec.default_add_bos);
        let qwen = pre_tokenizer_spec(Some("qwen2")).expect("qwen2");
        assert!(!qwen.ignore_merges && !qwen.default_add_bos);
    }
}
