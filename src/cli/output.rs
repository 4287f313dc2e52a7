//! The CLI's one output layer: stdout writes, kubectl's column alignment, YAML and JSON
//! printing, server-side Table rows, and kubectl's ages and timestamps.

use std::io::Write;

use serde_json::{Map, Value};

/// Writes to stdout and flushes, so watches show each line as it comes. A closed pipe
/// (`wk get pods | head`) is not an error worth reporting.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes one line to stdout.
pub fn println(line: &str) {
    print(&format!("{line}\n"));
}

/// Aligns tab-separated cells as Go's `text/tabwriter` does: each column block (consecutive
/// lines that have a tab-terminated cell in that column) is as wide as its widest cell plus
/// `padding`, at least `min_width`; the last cell of a line is never padded.
pub fn tabwrite(text: &str, min_width: usize, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_terminator('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut widths = Vec::new();
    let mut out = String::new();
    format_block(
        &lines,
        0,
        lines.len(),
        &mut widths,
        min_width,
        padding,
        &mut out,
    );
    out
}

fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    min_width: usize,
    padding: usize,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(&lines[line0..this], widths, out);
        line0 = this;
        let mut width = min_width;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(cell_width(lines[this][column]) + padding);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, min_width, padding, out);
        widths.pop();
        line0 = this;
    }
    write_lines(&lines[line0..line1], widths, out);
}

fn write_lines(lines: &[Vec<&str>], widths: &[usize], out: &mut String) {
    for line in lines {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j + 1 < line.len() {
                let w = widths.get(j).copied().unwrap_or(0);
                out.extend(std::iter::repeat_n(' ', w.saturating_sub(cell_width(cell))));
            }
        }
        out.push('\n');
    }
}

fn cell_width(cell: &str) -> usize {
    cell.chars().count()
}

/// kubectl's table writer settings: minimum width 6, padding 3.
pub fn table(rows: &[Vec<String>]) -> String {
    let text: String = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| c.replace(['\t', '\n'], " "))
                .collect::<Vec<_>>()
                .join("\t")
                + "\n"
        })
        .collect();
    tabwrite(&text, 6, 3)
}

/// A copy of a JSON value with every object's keys sorted, as Go's encoders print maps.
pub fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// YAML as `kubectl -o yaml` prints it (keys sorted).
///
/// # Errors
/// Never in practice; YAML encoding of JSON values cannot fail.
pub fn to_yaml(value: &Value) -> anyhow::Result<String> {
    Ok(yaml_serde::to_string(&sorted(value))?)
}

/// JSON as `kubectl -o json` prints it: keys sorted, four-space indent.
///
/// # Errors
/// Never in practice.
pub fn to_json(value: &Value) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    serde::Serialize::serialize(&sorted(value), &mut ser)?;
    buf.push(b'\n');
    Ok(String::from_utf8(buf)?)
}

/// How a server-side Table is printed.
#[derive(Debug, Default, Clone)]
pub struct TableStyle {
    /// `-o wide`: show columns with priority above 0.
    pub wide: bool,
    /// `-A`: a NAMESPACE column first.
    pub namespace: bool,
    /// `--show-labels`: a LABELS column last.
    pub labels: bool,
    /// `--output-watch-events`: an EVENT column first.
    pub events: bool,
    /// Print `pod/NAME` instead of `NAME` (several types at once).
    pub name_prefix: Option<String>,
}

impl TableStyle {
    /// The indexes of the columns to show.
    pub fn columns(&self, definitions: &[Value]) -> Vec<usize> {
        definitions
            .iter()
            .enumerate()
            .filter(|(_, d)| self.wide || d["priority"].as_i64().unwrap_or(0) == 0)
            .map(|(i, _)| i)
            .collect()
    }

    /// The header row.
    pub fn header(&self, definitions: &[Value]) -> Vec<String> {
        let mut out = Vec::new();
        if self.events {
            out.push("EVENT".to_owned());
        }
        if self.namespace {
            out.push("NAMESPACE".to_owned());
        }
        out.extend(self.columns(definitions).into_iter().map(|i| {
            definitions[i]["name"]
                .as_str()
                .unwrap_or_default()
                .to_uppercase()
        }));
        if self.labels {
            out.push("LABELS".to_owned());
        }
        out
    }

    /// One row's cells.
    pub fn row(&self, definitions: &[Value], row: &Value, event: Option<&str>) -> Vec<String> {
        let metadata = &row["object"]["metadata"];
        let mut out = Vec::new();
        if self.events {
            out.push(event.unwrap_or("ADDED").to_owned());
        }
        if self.namespace {
            out.push(
                metadata["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        let cells = row["cells"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for i in self.columns(definitions) {
            let mut text = cell_text(cells.get(i).unwrap_or(&Value::Null));
            if i == 0
                && let Some(prefix) = &self.name_prefix
            {
                text = format!("{prefix}/{text}");
            }
            out.push(text);
        }
        if self.labels {
            out.push(labels_text(&metadata["labels"]));
        }
        out
    }
}

/// A Table cell as kubectl prints it.
pub fn cell_text(cell: &Value) -> String {
    match cell {
        Value::Null => "<none>".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `k=v,k2=v2` sorted by key, or `<none>`.
pub fn labels_text(labels: &Value) -> String {
    let Some(map) = labels.as_object().filter(|m| !m.is_empty()) else {
        return "<none>".to_owned();
    };
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// kubectl's human duration (`45s`, `3m10s`, `5h`, `2d3h`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Parses an RFC 3339 timestamp.
pub fn timestamp(value: &Value) -> Option<jiff::Timestamp> {
    value.as_str().and_then(|s| s.parse().ok())
}

/// The age of a timestamp, or `<unknown>`.
pub fn age(value: &Value) -> String {
    timestamp(value).map_or_else(
        || "<unknown>".to_owned(),
        |t| human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
    )
}

/// A timestamp in kubectl describe's format (`Mon, 02 Jan 2006 15:04:05 -0700`), local time.
pub fn describe_time(value: &Value) -> String {
    timestamp(value).map_or_else(
        || "<unset>".to_owned(),
        |t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%a, %d %b %Y %H:%M:%S %z")
                .to_string()
        },
    )
}

/// Parses a Go-style duration (`60s`, `1m30s`, `500ms`, `2h`); a bare number is seconds.
///
/// # Errors
/// When the text is not a duration.
pub fn parse_duration(text: &str) -> anyhow::Result<std::time::Duration> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid duration \"{text}\""))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => anyhow::bail!("invalid duration \"{text}\""),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_line_up_like_kubectl_with_padding_three_and_min_width_six() {
        let rows = vec![
            vec!["NAME".into(), "READY".into(), "STATUS".into(), "AGE".into()],
            vec!["alpha".into(), "0/1".into(), "Pending".into(), "5s".into()],
            vec!["b".into(), "1/1".into(), "Running".into(), "10m".into()],
        ];
        assert_eq!(
            table(&rows),
            "NAME    READY   STATUS    AGE\nalpha   0/1     Pending   5s\nb       1/1     Running   10m\n"
        );
        assert_eq!(table(&[vec!["A".into(), "B".into()]]), "A     B\n");
    }

    #[test]
    fn describe_blocks_align_only_consecutive_lines() {
        let text = "Name:\tx\nNamespace:\tdefault\nContainers:\n  main:\n    Image:\ti\n    Port:\t8000/TCP\n";
        assert_eq!(
            tabwrite(text, 0, 2),
            "Name:       x\nNamespace:  default\nContainers:\n  main:\n    Image:  i\n    Port:   8000/TCP\n"
        );
    }

    #[test]
    fn durations_read_and_print_as_kubectl_does() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(190), "3m10s");
        assert_eq!(human_duration(3600 * 30), "30h");
        assert_eq!(human_duration(3600 * 51), "2d3h");
        assert_eq!(parse_duration("1m30s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn output_sorts_keys_as_go_does() {
        let v = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}});
        assert_eq!(
            to_yaml(&v).unwrap(),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"
        );
        assert!(
            to_json(&v)
                .unwrap()
                .starts_with("{\n    \"apiVersion\": \"v1\",\n")
        );
        assert_eq!(labels_text(&json!({"b": "2", "a": "1"})), "a=1,b=2");
        assert_eq!(labels_text(&Value::Null), "<none>");
    }
}
