//! Model loading and execution: GGUF parsing, tokenizer and chat template from GGUF
//! metadata, shared layers and one file per model family.

pub mod chat_template;
pub mod gguf;
pub mod tokenizer;
