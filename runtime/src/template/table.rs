//! `--format` for list commands, as Docker's CLI formatter: `table TEMPLATE` (a header
//! row and columns aligned like Go's `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`),
//! `json` (one JSON object per line), `table` alone (the command's default columns), or
//! a template run once per row.

use serde_json::Value;

use super::{Functions, Template, TemplateError};

/// A list command's `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFormat {
    /// A header row, then the rows, in aligned columns.
    Table(String),
    /// One line per row.
    Lines(String),
}

impl ListFormat {
    /// Docker's reading of `--format`: `table` alone is `default_table`; `table …` a
    /// table; `json` is `{{json .}}`; anything else a template. Literal `\t` and `\n`
    /// in it are a tab and a newline, and spaces around it go.
    pub fn new(format: &str, default_table: &str) -> Self {
        let format = if format == "table" {
            default_table
        } else {
            format
        };
        let unescape = |t: &str| {
            t.trim_matches(' ')
                .replace("\\t", "\t")
                .replace("\\n", "\n")
        };
        if let Some(rest) = format.strip_prefix("table") {
            ListFormat::Table(unescape(rest))
        } else if format == "json" {
            ListFormat::Lines("{{json .}}".into())
        } else {
            ListFormat::Lines(unescape(format))
        }
    }
}

/// Renders `rows` (each a JSON object of the command's fields) with `format`; `header`
/// maps each field to its column title. Rows are strict: an unknown field is an error,
/// as it is on Docker's typed rows.
pub fn render_list(
    format: &ListFormat,
    header: &Value,
    rows: &[Value],
) -> Result<String, TemplateError> {
    let (text, table) = match format {
        ListFormat::Table(t) => (t, true),
        ListFormat::Lines(t) => (t, false),
    };
    let template = Template::parse(text)?;
    let mut body = String::new();
    for row in rows {
        body.push_str(&template.execute_with(row, Functions::Normal, true)?);
        body.push('\n');
    }
    if !table {
        return Ok(body);
    }
    // As Docker's, the header ignores errors: it prints what it got.
    let mut all = template
        .execute_with(header, Functions::Header, false)
        .unwrap_or_default();
    all.push('\n');
    all.push_str(&body);
    Ok(tabwrite(&all))
}

/// Go's `text/tabwriter` with minwidth 10, tabwidth 1, padding 3, padchar ' ', no
/// flags: tab-terminated cells; a column block is a run of lines with a cell in that
/// column, as wide as its widest cell plus 3 (at least 10); the last cell of a line is
/// not part of a column.
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut widths = Vec::new();
    format_block(&lines, &mut widths, 0, lines.len(), &mut out);
    out
}

const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

fn cell_width(cell: &str) -> usize {
    cell.chars().count()
}

fn format_block(
    lines: &[Vec<&str>],
    widths: &mut Vec<usize>,
    line0: usize,
    line1: usize,
    out: &mut String,
) {
    let column = widths.len();
    let mut line0 = line0;
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, widths, line0, this, out);
        line0 = this;
        let mut width = MIN_WIDTH;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(cell_width(lines[this][column]) + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(lines, widths, line0, this, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, widths, line0, line1, out);
}

fn write_lines(
    lines: &[Vec<&str>],
    widths: &[usize],
    line0: usize,
    line1: usize,
    out: &mut String,
) {
    for (i, line) in lines.iter().enumerate().take(line1).skip(line0) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() && j + 1 < line.len() {
                let pad = widths[j].saturating_sub(cell_width(cell));
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        // The last line has no newline of its own.
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

impl TemplateError {
    /// The message Docker's CLI prints for this error.
    pub fn docker_message(&self) -> String {
        match self {
            TemplateError::Parse { .. } => format!("template parsing error: {self}"),
            TemplateError::Exec { .. } => self.to_string(),
        }
    }
}
