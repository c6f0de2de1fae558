//! The Python-side helpers Hugging Face transformers adds to its chat-template Jinja
//! environment, reimplemented for minijinja:
//! - `tojson` filter = `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//!   sort_keys=False)` (Python spacing `", "` / `": "`, no HTML escaping — unlike
//!   minijinja's built-in `tojson`);
//! - `raise_exception(message)` global: aborts rendering with [`Raised`];
//! - `strftime_now(format)` global: the current UTC time through a strftime subset.
//!
//! Invariant: every failure is a minijinja `Error` naming the offending argument; no
//! input panics.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// The error `raise_exception` attaches as source, so the caller can tell a template's
/// deliberate rejection apart from a broken template.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Raised(pub String);

pub fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    )
    .with_source(Raised(message)))
}

/// `json.dumps` options the `tojson` filter accepts as keyword arguments.
struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

pub fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators.as_deref() {
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
        Some([item, key]) => (item.clone(), key.clone()),
        Some(other) => {
            let detail = format!(
                "tojson: `separators` must be two strings, got {}",
                other.len()
            );
            return Err(Error::new(ErrorKind::InvalidOperation, detail));
        }
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: an undefined value is not JSON serializable",
        )),
        ValueKind::None => {
            out.push_str("null");
            Ok(())
        }
        ValueKind::Bool => {
            out.push_str(if value.is_true() { "true" } else { "false" });
            Ok(())
        }
        ValueKind::Number => {
            write_number(out, value);
            Ok(())
        }
        ValueKind::String => {
            write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii);
            Ok(())
        }
        ValueKind::Map => write_map(out, value, style, depth),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), style, depth, |out, i| {
                write_json(out, &items[i], style, depth + 1)
            })
        }
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: a value of kind {other} is not JSON serializable"),
        )),
    }
}

fn write_map(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    let mut keys: Vec<Value> = value.try_iter()?.collect();
    if style.sort_keys {
        keys.sort();
    }
    write_container(out, ('{', '}'), keys.len(), style, depth, |out, i| {
        let key = &keys[i];
        match key.as_str() {
            Some(text) => write_string(out, text, style.ensure_ascii),
            None => write_string(out, &key.to_string(), style.ensure_ascii),
        }
        out.push_str(&style.key_sep);
        write_json(out, &value.get_item(key)?, style, depth + 1)
    })
}

/// `[a, b]` / `{..}` with Python's indentation rules (empty containers stay `[]`).
fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    style: &JsonStyle,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    for i in 0..len {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        if let Some(width) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * (depth + 1)));
        }
        write_item(out, i)?;
    }
    if let (Some(width), true) = (style.indent, len > 0) {
        out.push('\n');
        out.push_str(&" ".repeat(width * depth));
    }
    out.push(close);
    Ok(())
}

fn write_number(out: &mut String, value: &Value) {
    if let Some(int) = value.as_i64().filter(|_| value.is_integer()) {
        let _ = write!(out, "{int}");
    } else if value.is_integer() {
        let _ = write!(out, "{value}");
    } else {
        out.push_str(&python_float_repr(
            f64::try_from(value.clone()).unwrap_or(f64::NAN),
        ));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// [-4, 16), otherwise `d.ddde+XX`.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}"); // e.g. "-1.2345e-7", shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{frac}e{exp_sign}{:02}", &digits[..1], exp.abs())
    }
}

/// A JSON string literal as Python's `json.dumps` writes it.
fn write_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `strftime_now(format)`: the current UTC time formatted with `format`.
pub fn strftime_now(format: String) -> Result<Value, Error> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, seconds).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Format a UNIX time (UTC) with the strftime directives chat templates use.
pub fn strftime(format: &str, unix_seconds: i64) -> Result<String, Error> {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(directive) = chars.next() else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "strftime_now: format ends with '%'",
            ));
        };
        let _ = match directive {
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'm' => write!(out, "{month:02}"),
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'B' => write!(out, "{}", MONTHS[month as usize - 1]),
            'b' | 'h' => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            'A' => write!(out, "{}", WEEKDAYS[weekday]),
            'a' => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", (hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            '%' => write!(out, "%"),
            other => {
                let detail = format!("strftime_now: directive %{other} is not supported");
                return Err(Error::new(ErrorKind::InvalidOperation, detail));
            }
        };
    }
    Ok(out)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:25:09 UTC, a Friday (Llama 3.1's default date).
        let t = 1_722_000_309;
        assert_eq!(strftime("%d %b %Y", t).expect("fmt"), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %I%p %%", t).expect("fmt"),
            "Friday July 26, 24 13:25:09 01PM %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0).expect("fmt"), "1970-01-01");
        assert_eq!(
            strftime("%Y-%m-%d %a", 951_782_400).expect("fmt"),
            "2000-02-29 Tue"
        );
        assert!(strftime("%Q", t).is_err());
        assert!(strftime("50%", t).is_err());
    }

    #[test]
    fn floats_print_like_python() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
        ] {
            assert_eq!(python_float_repr(x), want);
        }
    }
}
