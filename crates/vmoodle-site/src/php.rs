//! PHP literals. Every value vmoodle writes into PHP goes through these functions, so no
//! register value can break out of its string.

/// A single-quoted PHP string: only `\` and `'` are special inside one.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

pub fn bool(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(super::string(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(super::string("?><?php x"), "'?><?php x'");
    }
}
