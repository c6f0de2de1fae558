//! The chat's settings: the product defaults of a chat turn (`--chat-defaults`) and the
//! limits of a WebSocket (`--ws-limits`), both given as `key=value` lists
//! (`temperature=0.5,max_tokens=300`); a key not given keeps its default.
//!
//! Invariants: every value is checked when parsed (a bad flag stops the server before
//! it listens, naming the key, the rule and the value); the limits are all finite and
//! non-zero, so everything a client controls on a socket is bounded.

use std::time::Duration;

use crate::config::parse_bytes;
use crate::dialog::WindowRule;

/// The defaults of a chat turn; a `message.send` may override the sampling ones within
/// `WsLimits::max_tokens` and the engine's ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub max_tokens: usize,
    /// Completed turns of history kept in the prompt (the window; 0 = all).
    pub history_turns: usize,
}

impl Default for ChatDefaults {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            repetition_penalty: 1.2,
            max_tokens: 200,
            history_turns: 3,
        }
    }
}

impl ChatDefaults {
    /// The history window: `history_turns` with the server's window step.
    pub fn window(&self, server: WindowRule) -> WindowRule {
        WindowRule {
            min_turns: self.history_turns,
            step: server.step,
        }
    }

    /// Parses `--chat-defaults` (`temperature`, `top_p`, `repetition_penalty`,
    /// `max_tokens`, `history_turns`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut d = Self::default();
        for (key, value) in pairs(text, "--chat-defaults")? {
            match key {
                "temperature" => d.temperature = number(key, value, 0.0, 2.0)?,
                "top_p" => d.top_p = number(key, value, 0.0, 1.0)?,
                "repetition_penalty" => d.repetition_penalty = number(key, value, 0.01, 10.0)?,
                "max_tokens" => d.max_tokens = count(key, value, 1)?,
                "history_turns" => d.history_turns = count(key, value, 0)?,
                other => return Err(unknown("--chat-defaults", other, CHAT_KEYS)),
            }
        }
        Ok(d)
    }
}

const CHAT_KEYS: &str = "temperature, top_p, repetition_penalty, max_tokens, history_turns";
const LIMIT_KEYS: &str = "max_message_bytes, messages_per_second, burst, sockets_per_key, \
     send_buffer, generations_per_socket, max_tokens, heartbeat_seconds, idle_seconds, \
     auth_seconds";

/// What one WebSocket may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WsLimits {
    /// Largest client message (bytes, after joining its frames); larger: closed (1009).
    pub max_message_bytes: usize,
    /// Sustained client messages per second (token bucket); faster ones get an error.
    pub messages_per_second: f64,
    /// Messages a client may send at once above the sustained rate.
    pub burst: u32,
    /// Open sockets per API key (the anonymous owner when no keys are configured).
    pub sockets_per_key: usize,
    /// Bytes of server messages waiting for a slow client; past it the socket is closed.
    pub send_buffer: usize,
    /// Generations one socket may run at once.
    pub generations_per_socket: usize,
    /// Largest `max_tokens` a message may ask for.
    pub max_tokens: usize,
    /// Interval of the server's WebSocket pings.
    pub heartbeat: Duration,
    /// A socket silent this long (no message, no pong) is closed as dead.
    pub idle: Duration,
    /// Time a socket has to authenticate.
    pub auth: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 10,
            messages_per_second: 20.0,
            burst: 40,
            sockets_per_key: 256,
            send_buffer: 1 << 20,
            generations_per_socket: 8,
            max_tokens: 4096,
            heartbeat: Duration::from_secs(20),
            idle: Duration::from_secs(60),
            auth: Duration::from_secs(10),
        }
    }
}

impl WsLimits {
    /// Parses `--ws-limits` (keys: see `LIMIT_KEYS`; sizes take `64KiB`-style units).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut l = Self::default();
        for (key, value) in pairs(text, "--ws-limits")? {
            match key {
                "max_message_bytes" => l.max_message_bytes = bytes(key, value, 256)?,
                "messages_per_second" => {
                    l.messages_per_second = f64::from(number(key, value, 0.01, 1e6)?)
                }
                "burst" => l.burst = u32::try_from(count(key, value, 1)?).unwrap_or(u32::MAX),
                "sockets_per_key" => l.sockets_per_key = count(key, value, 1)?,
                "send_buffer" => l.send_buffer = bytes(key, value, 1024)?,
                "generations_per_socket" => l.generations_per_socket = count(key, value, 1)?,
                "max_tokens" => l.max_tokens = count(key, value, 1)?,
                "heartbeat_seconds" => l.heartbeat = seconds(key, value)?,
                "idle_seconds" => l.idle = seconds(key, value)?,
                "auth_seconds" => l.auth = seconds(key, value)?,
                other => return Err(unknown("--ws-limits", other, LIMIT_KEYS)),
            }
        }
        Ok(l)
    }
}

/// The chat's whole configuration (part of `ServerConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatConfig {
    pub defaults: ChatDefaults,
    pub limits: WsLimits,
    /// Serve the chat page at `/` (`--no-web-ui` turns it off).
    pub web_ui: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            defaults: ChatDefaults::default(),
            limits: WsLimits::default(),
            web_ui: true,
        }
    }
}

fn pairs<'a>(text: &'a str, flag: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| {
                    format!("{flag} takes key=value pairs separated by commas. Given: {p:?}")
                })
        })
        .collect()
}

fn unknown(flag: &str, key: &str, keys: &str) -> String {
    format!("{flag}: unknown key {key:?}; the keys are {keys}")
}

fn number(key: &str, value: &str, min: f32, max: f32) -> Result<f32, String> {
    value
        .parse::<f32>()
        .ok()
        .filter(|v| v.is_finite() && (min..=max).contains(v))
        .ok_or_else(|| format!("`{key}` must be a number in [{min}, {max}]. Given: {value:?}"))
}

fn count(key: &str, value: &str, min: usize) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&v| v >= min)
        .ok_or_else(|| format!("`{key}` must be an integer >= {min}. Given: {value:?}"))
}

fn bytes(key: &str, value: &str, min: u64) -> Result<usize, String> {
    parse_bytes(value)
        .ok()
        .filter(|&v| v >= min)
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
        .ok_or_else(|| {
            format!("`{key}` must be a size >= {min} bytes (e.g. 64KiB). Given: {value:?}")
        })
}

fn seconds(key: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!("`{key}` must be a number of seconds in (0, 86400]. Given: {value:?}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_product_defaults_and_keys_override_them() {
        let d = ChatDefaults::parse("").expect("empty");
        assert_eq!(d, ChatDefaults::default());
        assert_eq!(
            (d.temperature, d.top_p, d.repetition_penalty),
            (0.7, 0.9, 1.2)
        );
        assert_eq!((d.max_tokens, d.history_turns), (200, 3));
        let d = ChatDefaults::parse("temperature=0, max_tokens=12,history_turns=1").expect("ok");
        assert_eq!((d.temperature, d.max_tokens, d.history_turns), (0.0, 12, 1));
        for bad in [
            "temperature=3",
            "max_tokens=0",
            "colour=blue",
            "top_p",
            "top_p=x",
        ] {
            let err = ChatDefaults::parse(bad).expect_err(bad);
            assert!(err.contains('`') || err.contains("key"), "{bad}: {err}");
        }
    }

    #[test]
    fn limits_parse_sizes_and_seconds() {
        let l = WsLimits::parse("send_buffer=16KiB,heartbeat_seconds=0.5,sockets_per_key=2")
            .expect("ok");
        assert_eq!(l.send_buffer, 16 << 10);
        assert_eq!(l.heartbeat, Duration::from_millis(500));
        assert_eq!(l.sockets_per_key, 2);
        assert_eq!(l.max_message_bytes, WsLimits::default().max_message_bytes);
        for bad in ["send_buffer=1", "idle_seconds=0", "burst=0", "nope=1"] {
            assert!(WsLimits::parse(bad).is_err(), "{bad}");
        }
    }
}
