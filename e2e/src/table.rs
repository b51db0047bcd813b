//! Plain-text tables in `kubectl get`'s style: upper-case headers, columns padded to
//! their widest cell and separated by three spaces, empty cells shown as `<none>`.

/// Renders `rows` under `headers`, one line each, with a trailing newline.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    let cell = |s: &str| -> String {
        if s.is_empty() {
            "<none>".into()
        } else {
            s.into()
        }
    };
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell(c).chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.iter().map(|c| cell(c)).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_like_kubectl() {
        let t = render(
            &["NAME", "READY"],
            &[
                vec!["h100-fleet".into(), "True".into()],
                vec!["a".into(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "NAME         READY\nh100-fleet   True\na            <none>\n"
        );
    }
}
