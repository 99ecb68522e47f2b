//! Results from Globus Compute endpoints older than 3.6.0, which ignore the submit's
//! `result_serializers` and answer with the SDK's default `DillDataBase64` (`00\n`, or
//! `01\n` DillCode): base64 (with `codecs`' line breaks) of a dill pickle. dill pickles a
//! plain value as a standard pickle (protocol 4 by default, 2 to 5 seen), so plain values
//! (str, bytes, dict, list, tuple, numbers, bool, None) are decoded without Python, by
//! `serde-pickle` (which executes nothing); anything else (a global such as a class
//! instance, a function, a set) is refused.

use base64::Engine;
use serde_json::{Map, Number, Value};
use serde_pickle::{DeOptions, HashableValue, Value as Pickle};

/// The SDK's name of a serializer header, for messages.
pub fn serializer_name(header: &str) -> &'static str {
    match header {
        "00" => "DillDataBase64",
        "01" => "DillCode",
        "02" => "PickleCode",
        "03" => "DillCodeTextInspect",
        "04" => "DillCodeSource",
        "10" => "CombinedCode",
        "11" => "JSONData",
        "12" => "AllCodeStrategies",
        "13" => "AllDataStrategies",
        "st" => "PureSourceTextInspect",
        "sd" => "PureSourceDill",
        _ => "an unknown serializer",
    }
}

/// What a pickled result holds, once known to be plain.
#[derive(Debug, PartialEq)]
pub enum Plain {
    /// A top-level str or bytes: the text itself (FIRST's function returns a JSON string).
    Text(String),
    /// Anything else, as `json.dumps` would have written it.
    Json(Value),
}

/// Decodes the base64 body of a `00\n`/`01\n` result (after the header).
pub fn decode(body: &str) -> Result<Plain, String> {
    let compact: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| format!("not base64: {e}"))?;
    only_plain_opcodes(&bytes)?;
    let value = serde_pickle::value_from_slice(&bytes, DeOptions::new())
        .map_err(|e| format!("not a pickle of a plain value ({e})"))?;
    match value {
        Pickle::String(s) => Ok(Plain::Text(s)),
        Pickle::Bytes(b) => String::from_utf8(b)
            .map(Plain::Text)
            .map_err(|_| "bytes that are not UTF-8 text".to_string()),
        other => to_json(other).map(Plain::Json),
    }
}

/// Walks the pickle's opcodes and refuses any that builds an object: the pickle crate makes
/// a best effort on objects (a class instance comes out as its `__dict__`), so refusal has
/// to happen here. The one global allowed is `_codecs.encode`, which protocols 0 to 2 use
/// for bytes; protocols 3 to 5 need none for plain values.
fn only_plain_opcodes(p: &[u8]) -> Result<(), String> {
    let mut i = 0;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = p.get(*i..*i + n).ok_or("a truncated pickle")?;
        *i += n;
        Ok(s)
    };
    let line = |i: &mut usize| -> Result<&[u8], String> {
        let rest = p.get(*i..).unwrap_or_default();
        let end = memchr::memchr(b'\n', rest).ok_or("a truncated pickle")?;
        *i += end + 1;
        Ok(&rest[..end])
    };
    let le = |b: &[u8]| b.iter().rev().fold(0usize, |n, x| (n << 8) | *x as usize);
    // The last two strings pushed: STACK_GLOBAL's module and name, for the message.
    let mut strings: [&[u8]; 2] = [b"?", b"?"];
    while i < p.len() {
        let op = p[i];
        i += 1;
        match op {
            b'.' => return Ok(()),
            // No argument.
            b'(' | b'0' | b'1' | b'2' | b'N' | b'a' | b'e' | b'l' | b't' | b'd' | b's' | b'u'
            | b']' | b')' | b'}' | b'R' | 0x88 | 0x89 | 0x85 | 0x86 | 0x87 | 0x8f | 0x90 | 0x91
            | 0x94 => {}
            // A text line.
            b'I' | b'L' | b'F' | b'S' | b'V' | b'g' | b'p' => {
                line(&mut i)?;
            }
            b'c' => {
                let module = line(&mut i)?;
                let name = line(&mut i)?;
                if (module, name) != (&b"_codecs"[..], &b"encode"[..]) {
                    return Err(format!(
                        "an object of {}.{}",
                        String::from_utf8_lossy(module),
                        String::from_utf8_lossy(name)
                    ));
                }
            }
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | 0x80 => {
                take(&mut i, 1)?;
            }
            b'M' => {
                take(&mut i, 2)?;
            }
            b'J' | b'j' | b'r' => {
                take(&mut i, 4)?;
            }
            b'G' | 0x95 => {
                take(&mut i, 8)?;
            }
            // Length-prefixed data.
            b'U' | b'C' | 0x8c | 0x8a | b'T' | b'X' | b'B' | 0x8b | 0x8d | 0x8e => {
                let width = match op {
                    b'U' | b'C' | 0x8c | 0x8a => 1,
                    0x8d | 0x8e => 8,
                    _ => 4,
                };
                let n = le(take(&mut i, width)?);
                let data = take(&mut i, n)?;
                if matches!(op, 0x8c | b'X' | 0x8d) {
                    strings = [strings[1], data];
                }
            }
            // STACK_GLOBAL, INST, OBJ, NEWOBJ(_EX), BUILD, EXT*, PERSID, out-of-band
            // buffers, bytearray: not a plain value.
            0x93 => {
                return Err(format!(
                    "an object of {}.{}",
                    String::from_utf8_lossy(strings[0]),
                    String::from_utf8_lossy(strings[1])
                ))
            }
            other => return Err(format!("an object (pickle opcode 0x{other:02x})")),
        }
    }
    Err("a truncated pickle".into())
}

/// A pickled value as JSON, following `json.dumps`: tuples become lists, dict keys that
/// are numbers, booleans or None become strings; bytes, sets and non-finite floats are
/// refused. (Dict keys come out sorted: the pickle crate keeps dicts in B-tree maps.)
fn to_json(v: Pickle) -> Result<Value, String> {
    Ok(match v {
        Pickle::None => Value::Null,
        Pickle::Bool(b) => Value::Bool(b),
        Pickle::I64(i) => Value::from(i),
        Pickle::Int(big) => {
            let text = big.to_string();
            let n = text
                .parse::<u64>()
                .map(Number::from)
                .map_err(|_| format!("an integer out of range ({text})"))?;
            Value::Number(n)
        }
        Pickle::F64(f) => Value::Number(
            Number::from_f64(f).ok_or_else(|| format!("a float JSON cannot hold ({f})"))?,
        ),
        Pickle::String(s) => Value::String(s),
        Pickle::List(items) | Pickle::Tuple(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Pickle::Dict(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                map.insert(key(k)?, to_json(v)?);
            }
            Value::Object(map)
        }
        Pickle::Bytes(_) => return Err("bytes inside a value".into()),
        Pickle::Set(_) | Pickle::FrozenSet(_) => return Err("a set".into()),
    })
}

fn key(k: HashableValue) -> Result<String, String> {
    Ok(match k {
        HashableValue::String(s) => s,
        HashableValue::I64(i) => i.to_string(),
        HashableValue::Int(i) => i.to_string(),
        HashableValue::Bool(b) => b.to_string(),
        HashableValue::None => "null".into(),
        HashableValue::F64(f) if f.is_finite() => Value::from(f).to_string(),
        _ => return Err("a dict key that is not a str or number".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fixture: &str) -> &str {
        fixture.strip_prefix("00\n").unwrap()
    }

    const ANSWER: &str = include_str!("../../tests/data/globus-compute/answer.json");

    fn answer() -> Value {
        serde_json::from_str(ANSWER).unwrap()
    }

    #[test]
    fn dill_str_and_bytes_are_the_text() {
        let Plain::Text(s) = decode(body(include_str!(
            "../../tests/data/globus-compute/result-dill-str.txt"
        )))
        .unwrap() else {
            panic!("not text")
        };
        assert!(
            s.starts_with("{\n    \"id\": \"chatcmpl-old-endpoint\""),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), answer());
        let Plain::Text(b) = decode(body(include_str!(
            "../../tests/data/globus-compute/result-dill-bytes.txt"
        )))
        .unwrap() else {
            panic!("not text")
        };
        assert_eq!(serde_json::from_str::<Value>(&b).unwrap(), answer());
        let Plain::Text(b2) = decode(body(include_str!(
            "../../tests/data/globus-compute/result-pickle2-bytes.txt"
        )))
        .unwrap() else {
            panic!("not text")
        };
        assert_eq!(b2, b);
    }

    #[test]
    fn dicts_at_protocols_2_3_and_5() {
        for fixture in [
            include_str!("../../tests/data/globus-compute/result-pickle2-dict.txt"),
            include_str!("../../tests/data/globus-compute/result-pickle3-dict.txt"),
            include_str!("../../tests/data/globus-compute/result-dill5-dict.txt"),
        ] {
            assert_eq!(decode(body(fixture)).unwrap(), Plain::Json(answer()));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let datetime = include_str!("../../tests/data/globus-compute/result-dill-datetime.txt");
        let err = decode(body(datetime)).unwrap_err();
        assert!(err.contains("datetime"), "{err}");
        let object = include_str!("../../tests/data/globus-compute/result-dill-object.txt");
        assert!(decode(body(object)).is_err());
        let code = include_str!("../../tests/data/globus-compute/result-dillcode-function.txt");
        assert!(decode(code.strip_prefix("01\n").unwrap()).is_err());
        assert!(decode("not base64 !").is_err());
    }
}
