//! Holds `config/default.toml` to being the operator's one reference: every key the code
//! reads is in it, with a comment, and a key left commented out there has no default in the
//! code either (its line only shows what a value looks like).

use std::collections::BTreeMap;

use super::{Settings, DEFAULT_TOML};

/// How one key appears in the reference.
#[derive(Debug)]
struct Entry {
    /// Written as `# key = …`: documented, but unset by default.
    commented_out: bool,
    /// A comment describes it: the line above, one at its end, or the comment above its group
    /// naming it.
    described: bool,
}

/// The dotted keys of `config/default.toml`, set or commented out. Keys under a
/// `[[table.array]]` count as that array's (`routing.rules`).
fn reference_keys() -> BTreeMap<String, Entry> {
    let mut keys = BTreeMap::new();
    let mut table = String::new();
    // The comment lines above the current run of key lines, and whether the line just before
    // is one of them.
    let mut block = String::new();
    let mut after_comment = false;
    for line in DEFAULT_TOML.lines().map(str::trim) {
        let (commented_out, text) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if text.starts_with('[') && text.ends_with(']') {
            table = text.trim_matches(['[', ']']).to_string();
            // A commented-out example table belongs to the comment above it.
            if !commented_out {
                block.clear();
                after_comment = false;
            }
            continue;
        }
        let key = text
            .split_once(" = ")
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        match key {
            Some(key) => {
                let trailing = text
                    .split_once(" = ")
                    .is_some_and(|(_, v)| v.contains(" # "));
                let dotted = if line.starts_with('#') && table == "routing.rules" {
                    table.clone()
                } else {
                    format!("{table}.{key}")
                };
                let described = after_comment || trailing || block.contains(key);
                keys.entry(dotted).or_insert(Entry {
                    commented_out,
                    described,
                });
                after_comment = false;
            }
            None if commented_out => {
                block.push_str(text);
                block.push('\n');
                after_comment = true;
            }
            None => {
                // A blank line ends the group a comment describes.
                block.clear();
                after_comment = false;
            }
        }
    }
    keys
}

/// The dotted keys the code reads, with their compiled-in defaults (secrets as redacted).
fn code_keys() -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, value: serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        serde_json::to_value(Settings::defaults()).unwrap(),
        &mut out,
    );
    out
}

#[test]
fn default_toml_documents_every_key_with_its_default() {
    let reference = reference_keys();
    let code = code_keys();
    // Commented out means "unset by default": the code must agree (a secret reads as "").
    let unset = |v: &serde_json::Value| {
        v.is_null() || *v == serde_json::json!("") || *v == serde_json::json!([])
    };
    let problems: [(&str, Vec<&String>); 4] = [
        (
            "keys missing from config/default.toml",
            code.keys()
                .filter(|k| !reference.contains_key(*k))
                .collect(),
        ),
        (
            "config/default.toml names keys the code does not read",
            reference
                .keys()
                .filter(|k| !code.contains_key(*k))
                .collect(),
        ),
        (
            "keys without a comment in config/default.toml",
            reference
                .iter()
                .filter_map(|(k, e)| (!e.described).then_some(k))
                .collect(),
        ),
        (
            "commented out in config/default.toml but set in the code",
            reference
                .iter()
                .filter_map(|(k, e)| (e.commented_out && !unset(&code[k])).then_some(k))
                .collect(),
        ),
    ];
    for (what, keys) in problems {
        assert!(keys.is_empty(), "{what}: {keys:?}");
    }
}
