//! A small JSON Schema checker for the OpenAPI document's schemas (types, required fields,
//! properties, items, $ref, oneOf/anyOf/allOf): enough to prove an answer matches its schema.

use serde_json::Value;

/// The 200 (or 201) answer schema of `method path` in the document.
pub fn response_schema<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let responses = &doc["paths"][path][method]["responses"];
    let ok = ["200", "201"]
        .iter()
        .map(|s| &responses[*s])
        .find(|r| !r.is_null())
        .unwrap_or_else(|| panic!("{method} {path} documents no 200/201 answer"));
    &ok["content"]["application/json"]["schema"]
}

/// Checks `v` against `schema`; returns every mismatch with its JSON path.
pub fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unsupported $ref {r}"));
        let target = &doc["components"]["schemas"][name];
        assert!(!target.is_null(), "$ref {r} names no schema");
        return check(doc, target, v, at, errs);
    }
    for (key, any) in [("oneOf", true), ("anyOf", true), ("allOf", false)] {
        if let Some(alts) = schema[key].as_array() {
            let results: Vec<Vec<String>> = alts
                .iter()
                .map(|s| {
                    let mut e = Vec::new();
                    check(doc, s, v, at, &mut e);
                    e
                })
                .collect();
            if any && !results.iter().any(Vec::is_empty) {
                errs.push(format!("{at}: matches none of {key}: {results:?}"));
            }
            if !any {
                errs.extend(results.into_iter().flatten());
            }
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| is_type(v, t)) {
            errs.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema["required"].as_array().into_iter().flatten() {
            let k = req.as_str().unwrap();
            if !obj.contains_key(k) {
                errs.push(format!("{at}: required field `{k}` is missing"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, s) in props {
                if let Some(x) = obj.get(k) {
                    check(doc, s, x, &format!("{at}.{k}"), errs);
                }
            }
            if schema["additionalProperties"] == Value::Bool(false) {
                for k in obj.keys().filter(|k| !props.contains_key(*k)) {
                    errs.push(format!("{at}: field `{k}` is not in the schema"));
                }
            }
        }
        if let Some(extra) = schema["additionalProperties"].as_object() {
            let extra = Value::Object(extra.clone());
            for (k, x) in obj {
                if schema["properties"].get(k).is_none() {
                    check(doc, &extra, x, &format!("{at}.{k}"), errs);
                }
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (n, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{n}]"), errs);
        }
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => panic!("unknown schema type {t}"),
    }
}

/// Panics unless `v` matches the documented answer of `method path`.
pub fn assert_matches(doc: &Value, path: &str, method: &str, v: &Value) {
    let schema = response_schema(doc, path, method);
    assert!(!schema.is_null(), "{method} {path}: no JSON schema");
    let mut errs = Vec::new();
    check(doc, schema, v, "$", &mut errs);
    assert!(
        errs.is_empty(),
        "{method} {path}: the answer does not match its schema:\n{}\n{v:#}",
        errs.join("\n")
    );
}

#[test]
fn the_checker_finds_mismatches() {
    let doc = serde_json::json!({"components": {"schemas": {"A": {
        "type": "object", "required": ["n"],
        "properties": {"n": {"type": "integer"}, "s": {"type": ["string", "null"]},
                       "l": {"type": "array", "items": {"$ref": "#/components/schemas/A"}}}
    }}}});
    let a = serde_json::json!({"$ref": "#/components/schemas/A"});
    let mut e = Vec::new();
    check(
        &doc,
        &a,
        &serde_json::json!({"n": 1, "s": null, "l": [{"n": 2}]}),
        "$",
        &mut e,
    );
    assert!(e.is_empty(), "{e:?}");
    check(
        &doc,
        &a,
        &serde_json::json!({"s": 3, "l": [{"n": "x"}]}),
        "$",
        &mut e,
    );
    assert_eq!(e.len(), 3, "{e:?}");
}
