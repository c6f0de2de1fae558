//! Activation buffers for one step, allocated once for the largest step
//! (`max_num_batched_tokens` rows) and reused, so the forward pass does not allocate.

use super::config::ModelConfig;

pub struct Workspace {
    pub hidden: usize,
    pub q_dim: usize,
    pub kv_dim: usize,
    pub ffn: usize,
    /// Residual stream `[T, hidden]`.
    pub x: Vec<f32>,
    /// Normed input / projection output `[T, hidden]`.
    pub xn: Vec<f32>,
    /// `[T, q_dim]`
    pub q: Vec<f32>,
    /// `[T, kv_dim]`
    pub k: Vec<f32>,
    /// `[T, kv_dim]`
    pub v: Vec<f32>,
    /// Attention output `[T, q_dim]`.
    pub attn: Vec<f32>,
    /// `[T, ffn]`
    pub gate: Vec<f32>,
    /// `[T, ffn]`
    pub up: Vec<f32>,
    /// Stacked output of a fused projection `[T, q_dim + 2 kv_dim]` or `[T, 2 ffn]`.
    pub fused: Vec<f32>,
    /// Final-normed rows that need logits `[S, hidden]`.
    pub head_in: Vec<f32>,
    /// `[S, vocab]`
    pub logits: Vec<f32>,
}

impl Workspace {
    /// Buffers for up to `max_tokens` rows per step and `max_seqs` logit rows.
    pub fn new(cfg: &ModelConfig, max_tokens: usize, max_seqs: usize) -> Self {
        let rows = |w: usize| vec![0.0f32; max_tokens * w];
        let fused_width = (cfg.q_dim() + 2 * cfg.kv_dim()).max(2 * cfg.ffn);
        Self {
            hidden: cfg.hidden,
            q_dim: cfg.q_dim(),
            kv_dim: cfg.kv_dim(),
            ffn: cfg.ffn,
            x: rows(cfg.hidden),
            xn: rows(cfg.hidden),
            q: rows(cfg.q_dim()),
            k: rows(cfg.kv_dim()),
            v: rows(cfg.kv_dim()),
            attn: rows(cfg.q_dim()),
            gate: rows(cfg.ffn),
            up: rows(cfg.ffn),
            fused: rows(fused_width),
            head_in: vec![0.0; max_seqs * cfg.hidden],
            logits: vec![0.0; max_seqs * cfg.vocab],
        }
    }

    /// Logit rows one `Transformer::head` call can produce.
    pub fn max_logit_rows(&self) -> usize {
        self.head_in.len() / self.hidden
    }

    /// Rows this workspace can hold per step.
    pub fn max_tokens(&self) -> usize {
        self.x.len() / self.hidden
    }
}
