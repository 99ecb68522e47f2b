//! Text every backend can store. PostgreSQL's `text` cannot hold a NUL character (the
//! whole statement is refused), and client input reaches columns unchecked (a `model`
//! field, a request id header, a path segment). Rust strings are valid UTF-8 already (bytes
//! become strings lossily where they are read), so what is left is NUL, replaced here by
//! U+FFFD as invalid UTF-8 is, and length: request-log identifier columns are cut at
//! [`MAX_FIELD_BYTES`] (on a character boundary). Applied once, where rows enter the store
//! (`queries.rs`): request-log rows, files, batches, batch line results, and ids looked up
//! for a client. (Key users and orgs with NUL are refused by `/admin/keys`; a NUL in a
//! path or query is refused before routing: `nul_input`.)

use std::borrow::Cow;
use std::sync::Arc;

use super::{BatchRow, FileRow, ItemRow, LogRow};

/// The longest identifier (model, user, request id...) stored, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

/// `s` with NUL replaced by U+FFFD and cut at `max` bytes; borrowed when already fine.
pub fn text(s: &str, max: usize) -> Cow<'_, str> {
    if ok(s, max) {
        return Cow::Borrowed(s);
    }
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(s[..end].replace('\0', "\u{FFFD}"))
}

fn fix(s: &mut String, max: usize) -> bool {
    match text(s, max) {
        Cow::Borrowed(_) => false,
        Cow::Owned(fixed) => {
            *s = fixed;
            true
        }
    }
}

/// [`fix`] for a name that is usually static: copied only when it needs a change (a row
/// read back from the spill file).
fn fix_cow(s: &mut Cow<'static, str>, max: usize) -> bool {
    !ok(s, max) && fix(s.to_mut(), max)
}

fn fix_opt(s: &mut Option<String>, max: usize) -> bool {
    s.as_mut().is_some_and(|s| fix(s, max))
}

/// Makes one row storable; true if anything changed. Payloads (bounded where they are
/// collected by `logging.payload_max_bytes`) only lose their NULs.
pub fn log_row(r: &mut LogRow) -> bool {
    let m = MAX_FIELD_BYTES;
    let mut changed = false;
    for s in [
        &mut r.id,
        &mut r.request_id,
        &mut r.user_id,
        &mut r.org_id,
        &mut r.model,
        &mut r.cluster,
        &mut r.framework,
        &mut r.target,
    ] {
        changed |= fix(s, m);
    }
    for s in [&mut r.route, &mut r.ending] {
        changed |= fix_cow(s, m);
    }
    if let Some(code) = &mut r.error_code {
        changed |= fix_cow(code, m);
    }
    changed |= fix_opt(&mut r.client_ip, m);
    changed |= fix_opt(&mut r.prompt, usize::MAX);
    changed |= fix_opt(&mut r.completion, usize::MAX);
    if !r.latency_ms.is_finite() {
        r.latency_ms = 0.0;
        changed = true;
    }
    if r.ttft_ms.is_some_and(|t| !t.is_finite()) {
        r.ttft_ms = None;
        changed = true;
    }
    changed
}

fn ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.contains('\0')
}

/// Whether [`log_row`] would leave the row as it is (a scan, no copy).
fn storable(r: &LogRow) -> bool {
    let m = MAX_FIELD_BYTES;
    [
        r.id.as_str(),
        &r.request_id,
        &r.user_id,
        &r.org_id,
        &r.model,
        &r.cluster,
        &r.framework,
        &r.target,
        &r.route,
        &r.ending,
    ]
    .iter()
    .all(|s| ok(s, m))
        && [r.error_code.as_deref(), r.client_ip.as_deref()]
            .iter()
            .all(|s| s.is_none_or(|s| ok(s, m)))
        && [&r.prompt, &r.completion]
            .iter()
            .all(|s| s.as_deref().is_none_or(|s| ok(s, usize::MAX)))
        && r.latency_ms.is_finite()
        && r.ttft_ms.is_none_or(f64::is_finite)
}

/// The rows, made storable; the same allocation when none needed a change (the usual case:
/// one scan, no copy).
pub fn log_rows(rows: Arc<[LogRow]>) -> Arc<[LogRow]> {
    if rows.iter().all(storable) {
        return rows;
    }
    rows.iter()
        .cloned()
        .map(|mut r| {
            log_row(&mut r);
            r
        })
        .collect()
}

/// An id looked up for a client: one holding NUL cannot be stored, so it is looked up as
/// what a stored one would be (nothing matches; PostgreSQL would refuse the query).
pub fn lookup(id: String) -> String {
    match text(&id, usize::MAX) {
        Cow::Borrowed(_) => id,
        Cow::Owned(fixed) => fixed,
    }
}

/// A file row's client text (the upload's file name).
pub fn file_row(mut f: FileRow) -> FileRow {
    fix(&mut f.owner, usize::MAX);
    fix(&mut f.filename, usize::MAX);
    f
}

/// A batch row's client text (FIRST's form: model, cluster, framework, output folder).
pub fn batch_row(mut b: BatchRow) -> BatchRow {
    fix(&mut b.owner, usize::MAX);
    fix(&mut b.input_file_id, usize::MAX);
    for s in [
        &mut b.model,
        &mut b.cluster,
        &mut b.framework,
        &mut b.output_folder,
    ] {
        fix_opt(s, usize::MAX);
    }
    b
}

/// Batch line results: `custom_id` comes from the input file.
pub fn item_rows(mut rows: Vec<ItemRow>) -> Vec<ItemRow> {
    for r in &mut rows {
        fix(&mut r.custom_id, usize::MAX);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_and_length_bounded_on_a_char_boundary() {
        assert!(matches!(text("plain", 10), Cow::Borrowed("plain")));
        assert_eq!(text("x\0y", 10), "x\u{FFFD}y");
        assert_eq!(text("ééé", 3), "é");
        assert_eq!(
            text(&"a".repeat(2000), MAX_FIELD_BYTES).len(),
            MAX_FIELD_BYTES
        );
    }

    #[test]
    fn rows_are_copied_only_when_one_needs_it() {
        let fine: Arc<[LogRow]> = vec![LogRow::sample("a")].into();
        assert!(Arc::ptr_eq(&fine, &log_rows(Arc::clone(&fine))));
        let mut bad = LogRow::sample("b");
        bad.model = "x\0y".into();
        bad.prompt = Some("p\0".into());
        bad.latency_ms = f64::NAN;
        let fixed = log_rows(vec![LogRow::sample("a"), bad].into());
        assert_eq!(fixed[0], LogRow::sample("a"));
        assert_eq!(fixed[1].model, "x\u{FFFD}y");
        assert_eq!(fixed[1].prompt.as_deref(), Some("p\u{FFFD}"));
        assert_eq!(fixed[1].latency_ms, 0.0);
    }
}
