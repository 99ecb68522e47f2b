//! Reading `qstat -f -F json` as PBS really prints it. PBS does not escape backslashes in
//! job names and `Variable_List` values (`"PS1":"\$ "` fails any JSON parser with
//! `Invalid \escape`), old versions print numbers with leading zeros (`"Priority":005`),
//! and `xargs` may run `qstat` more than once, so documents can follow each other. One
//! such job must not make the whole cluster unknown.
//!
//! So each document is first parsed as it is; when that fails, it is cut into jobs by a
//! scanner that only tracks strings (a backslash always takes the next character) and
//! brace depth. Each job's text is parsed alone, then once more repaired (invalid escapes
//! doubled, leading zeros dropped); a job still unreadable is counted, not returned.

use serde_json::Value;

/// One `qstat -F json` document.
#[derive(Debug, Default)]
pub struct Document {
    /// Job id and attributes, in output order.
    pub jobs: Vec<(String, Value)>,
    /// Jobs that could not be read.
    pub skipped: usize,
}

/// Every document in `output`. An error only when the output is not `qstat -F json` at all.
pub fn documents(output: &str) -> Result<Vec<Document>, String> {
    let spans = top_level_objects(output)?;
    if spans.is_empty() {
        return Err("no JSON object: not qstat -F json output".into());
    }
    spans
        .into_iter()
        .map(|s| document(&output[s.0..s.1]))
        .collect()
}

fn document(text: &str) -> Result<Document, String> {
    if let Ok(Value::Object(top)) = serde_json::from_str::<Value>(text) {
        check_header(top.contains_key("pbs_version") || top.contains_key("Jobs"))?;
        let jobs = match top.get("Jobs") {
            None => Vec::new(),
            Some(Value::Object(jobs)) => jobs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(_) => return Err("Jobs is not an object".into()),
        };
        return Ok(Document { jobs, skipped: 0 });
    }
    // Not JSON as a whole: find the members of the top object, then the jobs.
    let members = object_members(text, 0).ok_or("not a JSON object")?;
    check_header(
        members
            .iter()
            .any(|m| m.key == "pbs_version" || m.key == "Jobs"),
    )?;
    let mut doc = Document::default();
    let Some(jobs) = members.iter().find(|m| m.key == "Jobs") else {
        return Ok(doc);
    };
    let Some(members) = object_members(text, jobs.value.0) else {
        return Err("Jobs is not an object".into());
    };
    for m in members {
        match job(&text[m.value.0..m.value.1]) {
            Some(v) => doc.jobs.push((m.key, v)),
            None => doc.skipped += 1,
        }
    }
    Ok(doc)
}

fn check_header(ok: bool) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err("no pbs_version or Jobs: not qstat -F json output".into())
    }
}

fn job(text: &str) -> Option<Value> {
    let parsed = serde_json::from_str::<Value>(text)
        .ok()
        .or_else(|| serde_json::from_str::<Value>(&repair(text)).ok())?;
    matches!(parsed, Value::Object(_)).then_some(parsed)
}

/// `(start, end)` of each top-level `{...}` in `text`.
fn top_level_objects(text: &str) -> Result<Vec<(usize, usize)>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => {
                let end = value_end(b, i).ok_or("an unterminated JSON object")?;
                out.push((i, end));
                i = end;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => return Err("text outside JSON objects: not qstat -F json output".into()),
        }
    }
    Ok(out)
}

struct Member {
    key: String,
    /// `(start, end)` of the value's text.
    value: (usize, usize),
}

/// The members of the object starting at `start` (`text[start] == '{'`), keys decoded
/// leniently, values as text spans.
fn object_members(text: &str, start: usize) -> Option<Vec<Member>> {
    let b = text.as_bytes();
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = start + 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return Some(out),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(b, i)?;
        let raw = &text[i..key_end];
        let key = serde_json::from_str::<String>(raw)
            .or_else(|_| serde_json::from_str::<String>(&repair(raw)))
            .ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        out.push(Member {
            key,
            value: (i, end),
        });
        i = end;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `i` (`b[i] == '"'`); a backslash always
/// takes the next byte, whatever it is.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The end (exclusive) of the value starting at `i`: a string, an object or array (by
/// depth, skipping strings), or a bare word up to `,`, `}` or `]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Makes PBS's near-JSON parseable: inside strings, a backslash that does not start a
/// JSON escape is doubled (kept as a character); outside strings, leading zeros of numbers
/// are dropped (`005` is 5).
pub fn repair(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut prev_significant = ' ';
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    let next = chars.peek().copied();
                    let valid = match next {
                        Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => true,
                        Some('u') => {
                            let rest: String = chars.clone().skip(1).take(4).collect();
                            rest.len() == 4 && rest.chars().all(|h| h.is_ascii_hexdigit())
                        }
                        _ => false,
                    };
                    if valid {
                        out.push('\\');
                        if let Some(n) = chars.next() {
                            out.push(n);
                        }
                    } else {
                        out.push_str("\\\\");
                    }
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                // Raw control characters are not allowed in JSON strings either.
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '0' if matches!(prev_significant, ':' | ',' | '[' | '-')
                && chars.peek().is_some_and(char::is_ascii_digit) =>
            {
                // A leading zero before another digit: drop it (and any that follow).
                while chars.peek() == Some(&'0')
                    && chars.clone().nth(1).is_some_and(|d| d.is_ascii_digit())
                {
                    chars.next();
                }
                continue;
            }
            c => out.push(c),
        }
        if !c.is_whitespace() {
            prev_significant = c;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_doubles_invalid_escapes_and_drops_leading_zeros() {
        assert_eq!(
            repair(r#"{"PS1":"\$ \w","ok":"a\"b\n\u00e9","p":005,"n":[0,0.5,-007]}"#),
            r#"{"PS1":"\\$ \\w","ok":"a\"b\n\u00e9","p":5,"n":[0,0.5,-7]}"#
        );
        assert_eq!(repair(r#"{"x":"\u12"}"#), r#"{"x":"\\u12"}"#);
    }

    #[test]
    fn a_bad_job_is_skipped_and_the_others_kept() {
        let text = "{\n    \"timestamp\":1,\n    \"pbs_version\":\"2022\",\n    \"Jobs\":{\n        \"1.s\":{\n            \"Job_Name\":\"a\\$b\",\n            \"Priority\":005\n        },\n        \"2.s\":{\n            \"Priority\":--5\n        },\n        \"3.s\":{\n            \"Job_Name\":\"ok\"\n        }\n    }\n}\n";
        let docs = documents(text).unwrap();
        assert_eq!(docs.len(), 1);
        let ids: Vec<&str> = docs[0].jobs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ids, vec!["1.s", "3.s"]);
        assert_eq!(docs[0].jobs[0].1["Job_Name"], "a\\$b");
        assert_eq!(docs[0].jobs[0].1["Priority"], 5);
        assert_eq!(docs[0].skipped, 1);
    }

    #[test]
    fn documents_may_follow_each_other() {
        let one = r#"{"timestamp":1,"pbs_version":"v","pbs_server":"s","Jobs":{"1.s":{"job_state":"R"}}}"#;
        let none = r#"{"timestamp":1,"pbs_version":"v","pbs_server":"s"}"#;
        let docs = documents(&format!("{one}\n{none}\n{one}")).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs.iter().map(|d| d.jobs.len()).sum::<usize>(), 2);
        assert!(documents("qstat: command not found").is_err());
        assert!(documents("{\"jobs\":[]}").is_err());
    }
}
