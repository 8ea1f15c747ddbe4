//! What the commands print: a table or lines for people, JSON for scripts.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Where a command's result goes: standard output, as text or as JSON.
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints `doc` as one line of JSON, or the text `human` makes.
    pub(crate) fn print(&self, doc: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{doc}");
        } else {
            println!("{}", human());
        }
    }
}

/// A time as people read it, in UTC to the second.
pub(crate) fn when(at: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    at.format(&format).unwrap_or_else(|_| rfc3339(at))
}

/// A time as scripts read it.
pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// `c`, or `?` if it could change how the terminal shows what follows: a
/// control character (escape sequences, newlines), or an invisible format
/// character (bidirectional overrides, zero-width spaces) that a stored
/// User-Agent could use to disguise a line.
fn visible(c: char) -> char {
    let invisible = c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}');
    if invisible { '?' } else { c }
}

/// `text` cut to `max` characters, with an ellipsis when cut, each
/// character [`visible`].
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.chars().map(visible).collect();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).map(visible).collect();
    cut.push('…');
    cut
}

/// Columns padded to their widest cell, two spaces apart.
pub(crate) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = *width)).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    lines.join("\n")
}

/// `name: value` lines, the values aligned, each character [`visible`]:
/// one line per pair, whatever a stored value holds.
pub(crate) fn pairs(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(name, _)| name.len() + 1).max().unwrap_or(0);
    lines
        .iter()
        .map(|(name, value)| {
            let value: String = value.chars().map(visible).collect();
            format!("{:<width$}  {value}", format!("{name}:"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_each_column_to_its_widest_cell() {
        let rows = vec![vec!["a".to_owned(), "long value".to_owned()], vec!["bbb".to_owned(), "x".to_owned()]];
        assert_eq!(table(&["K", "V"], rows.into_iter()), "K    V\na    long value\nbbb  x");
    }

    #[test]
    fn shorten_cuts_with_an_ellipsis_and_defuses_control_characters() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("a\u{1b}[2Jb", 10), "a?[2Jb");
        assert_eq!(shorten("evil\u{202E}gpj.exe", 20), "evil?gpj.exe");
    }

    #[test]
    fn a_stored_value_cannot_add_a_line_to_pairs() {
        let shown = pairs(&[("device", "curl\nip: 6.6.6.6".to_owned()), ("ip", "192.0.2.1".to_owned())]);
        assert_eq!(shown.lines().count(), 2, "{shown}");
    }
}
