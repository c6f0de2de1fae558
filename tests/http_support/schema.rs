//! A small JSON Schema checker for the subset `openapi.yaml` uses (OpenAPI 3.1 schemas):
//! `$ref` to `#/components/schemas/*`, `type` (one or a list), `enum`, `const`,
//! `required`, `properties`, `additionalProperties` (bool or schema), `items`,
//! `minItems`, `minimum`, `maximum`, `oneOf`, `anyOf`, `allOf`. An unknown keyword is an
//! error, so the spec cannot silently use something this checker ignores.

use serde_json::Value;

/// Keywords that carry no constraint.
const ANNOTATIONS: &[&str] = &[
    "description",
    "example",
    "examples",
    "title",
    "default",
    "format",
];

pub struct Spec {
    pub root: Value,
}

impl Spec {
    pub fn load(path: &std::path::Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let root: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        Self { root }
    }

    /// Every `(METHOD, path)` the spec describes.
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in self.root["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
        ops
    }

    pub fn operation(&self, method: &str, path: &str) -> &Value {
        &self.root["paths"][path][method.to_lowercase()]
    }

    /// The schema of a response: exact status, then `4XX`/`5XX`, then `default`.
    pub fn response_schema(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: &str,
    ) -> Option<&Value> {
        let responses = &self.operation(method, path)["responses"];
        let class = format!("{}XX", status / 100);
        let response = [status.to_string(), class, "default".to_string()]
            .iter()
            .map(|k| &responses[k.as_str()])
            .find(|r| !r.is_null())?;
        let response = match response.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                &self.root["components"]["responses"][r.strip_prefix("#/components/responses/")?]
            }
            None => response,
        };
        let media = &response["content"][content_type];
        if media.is_null() {
            return None;
        }
        Some(if content_type == "text/event-stream" {
            &media["x-sse-data-schema"]
        } else {
            &media["schema"]
        })
    }

    /// Checks `value` against `schema`; the error names the JSON path.
    pub fn check(&self, schema: &Value, value: &Value) -> Result<(), String> {
        self.check_at(schema, value, "$")
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        match schema.get("$ref").and_then(Value::as_str) {
            None => Ok(schema),
            Some(r) => {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .ok_or(format!("unsupported $ref {r}"))?;
                let target = &self.root["components"]["schemas"][name];
                if target.is_null() {
                    return Err(format!("$ref {r} points nowhere"));
                }
                self.resolve(target)
            }
        }
    }

    fn check_at(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        let obj = schema
            .as_object()
            .ok_or(format!("{at}: schema is not an object"))?;
        for (key, rule) in obj {
            match key.as_str() {
                "type" => check_type(rule, value, at)?,
                "enum" => {
                    if !rule.as_array().is_some_and(|a| a.contains(value)) {
                        return Err(format!("{at}: {value} is not one of {rule}"));
                    }
                }
                "const" if rule != value => return Err(format!("{at}: {value} is not {rule}")),
                "const" => {}
                "required" => {
                    for name in rule
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        if value.is_object() && value.get(name).is_none() {
                            return Err(format!("{at}: missing required `{name}` in {value}"));
                        }
                    }
                }
                "properties" => {
                    let (Some(props), Some(fields)) = (rule.as_object(), value.as_object()) else {
                        continue;
                    };
                    for (name, sub) in props {
                        if let Some(v) = fields.get(name) {
                            self.check_at(sub, v, &format!("{at}.{name}"))?;
                        }
                    }
                }
                "additionalProperties" => self.check_additional(obj, rule, value, at)?,
                "items" => {
                    for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                        self.check_at(rule, item, &format!("{at}[{i}]"))?;
                    }
                }
                "minItems" => {
                    let min = rule.as_u64().unwrap_or(0) as usize;
                    if value.as_array().is_some_and(|a| a.len() < min) {
                        return Err(format!("{at}: fewer than {min} items"));
                    }
                }
                "minimum" | "maximum" => check_bound(key, rule, value, at)?,
                "minLength" | "maxLength" => {
                    let chars = value.as_str().map(|s| s.chars().count());
                    check_count(key, rule, chars, at)?
                }
                "maxProperties" => {
                    let pairs = value.as_object().map(|o| o.len());
                    check_count(key, rule, pairs, at)?
                }
                "propertyNames" => {
                    for name in value.as_object().into_iter().flat_map(|o| o.keys()) {
                        let key_at = format!("{at} key {name:?}");
                        self.check_at(rule, &Value::String(name.clone()), &key_at)?;
                    }
                }
                "oneOf" | "anyOf" => self.check_alternatives(key, rule, value, at)?,
                "allOf" => {
                    for sub in rule.as_array().into_iter().flatten() {
                        self.check_at(sub, value, at)?;
                    }
                }
                k if ANNOTATIONS.contains(&k) => {}
                other => {
                    return Err(format!(
                        "{at}: schema keyword `{other}` is not supported by the checker"
                    ))
                }
            }
        }
        Ok(())
    }

    fn check_additional(
        &self,
        obj: &serde_json::Map<String, Value>,
        rule: &Value,
        value: &Value,
        at: &str,
    ) -> Result<(), String> {
        let Some(fields) = value.as_object() else {
            return Ok(());
        };
        let known = obj.get("properties").and_then(Value::as_object);
        for (name, v) in fields {
            if known.is_some_and(|k| k.contains_key(name)) {
                continue;
            }
            match rule {
                Value::Bool(false) => return Err(format!("{at}: unexpected field `{name}`")),
                Value::Bool(true) => {}
                sub => self.check_at(sub, v, &format!("{at}.{name}"))?,
            }
        }
        Ok(())
    }

    fn check_alternatives(
        &self,
        key: &str,
        rule: &Value,
        value: &Value,
        at: &str,
    ) -> Result<(), String> {
        let results: Vec<_> = rule
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| self.check_at(s, value, at))
            .collect();
        let passed = results.iter().filter(|r| r.is_ok()).count();
        let ok = if key == "oneOf" {
            passed == 1
        } else {
            passed >= 1
        };
        if ok {
            Ok(())
        } else {
            let why: Vec<String> = results.into_iter().filter_map(Result::err).collect();
            Err(format!(
                "{at}: {passed} alternatives of {key} match; failures: {why:?}"
            ))
        }
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

fn check_type(rule: &Value, value: &Value, at: &str) -> Result<(), String> {
    let names: Vec<&str> = match rule {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(format!("{at}: bad `type` {rule}")),
    };
    if names.iter().any(|n| type_matches(n, value)) {
        Ok(())
    } else {
        Err(format!("{at}: {value} is not of type {rule}"))
    }
}

fn check_bound(key: &str, rule: &Value, value: &Value, at: &str) -> Result<(), String> {
    let (Some(bound), Some(v)) = (rule.as_f64(), value.as_f64()) else {
        return Ok(());
    };
    let ok = if key == "minimum" {
        v >= bound
    } else {
        v <= bound
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: {v} violates {key} {bound}"))
    }
}

/// `minLength` / `maxLength` / `maxProperties`: `count` (characters or pairs; `None` where
/// the keyword does not apply to the value's type) against the bound `rule`.
fn check_count(key: &str, rule: &Value, count: Option<usize>, at: &str) -> Result<(), String> {
    let (Some(bound), Some(count)) = (rule.as_u64(), count) else {
        return Ok(());
    };
    let ok = match key {
        "minLength" => count as u64 >= bound,
        _ => count as u64 <= bound,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: {count} breaks `{key}: {bound}`"))
    }
}
