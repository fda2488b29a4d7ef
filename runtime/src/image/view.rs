//! What users read of images: `images --format` rows.

use serde_json::{Value, json};

use super::store::Image;
use crate::template::{ListFormat, TemplateError, render_list};
use crate::{go_time, human_duration, parse_rfc3339};

/// `images --format table`: Docker's default columns.
pub const IMAGES_TABLE: &str =
    "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}";

/// The column titles of `images --format table`, Docker's.
pub fn images_header() -> Value {
    json!({
        "ID": "IMAGE ID",
        "Repository": "REPOSITORY",
        "Tag": "TAG",
        "Digest": "DIGEST",
        "CreatedSince": "CREATED",
        "CreatedAt": "CREATED AT",
        "Size": "SIZE",
        "Containers": "CONTAINERS",
        "VirtualSize": "SIZE",
        "SharedSize": "SHARED SIZE",
        "UniqueSize": "UNIQUE SIZE",
    })
}

/// `history --format table`: Docker's default columns.
pub const HISTORY_TABLE: &str =
    "table {{.ID}}\\t{{.CreatedSince}}\\t{{.CreatedBy}}\\t{{.Size}}\\t{{.Comment}}";

/// The column titles of `history`, Docker's.
pub fn history_header() -> Value {
    json!({
        "ID": "IMAGE",
        "CreatedSince": "CREATED",
        "CreatedAt": "CREATED AT",
        "CreatedBy": "CREATED BY",
        "Size": "SIZE",
        "Comment": "COMMENT",
    })
}

/// The rows of `arca history`: the config's history, newest first, each step that made
/// a layer with that layer's size as stored; the image's ID on the newest row and
/// `<missing>` on the others, as Docker shows a pulled image. Without a history, a row
/// per layer.
pub fn history_rows(image: &Image, layer_sizes: &[u64], at: u64, no_trunc: bool) -> Vec<Value> {
    let mut steps = image.config.history.clone();
    if steps.is_empty() {
        steps = layer_sizes
            .iter()
            .map(|_| super::store::HistoryEntry::default())
            .collect();
    }
    let mut sizes = layer_sizes.iter();
    let mut rows: Vec<Value> = steps
        .iter()
        .map(|h| {
            let size = if h.empty_layer {
                0
            } else {
                sizes.next().copied().unwrap_or(0)
            };
            let created = h.created.as_deref().and_then(parse_rfc3339);
            let by = h.created_by.clone().unwrap_or_default();
            let by = if no_trunc {
                by
            } else {
                crate::ellipsis(&by, 45)
            };
            json!({
                "ID": "<missing>",
                "CreatedSince": created.map_or("N/A".into(), |c| format!("{} ago", human_duration(at.saturating_sub(c)))),
                "CreatedAt": created.map_or(String::new(), go_time),
                "CreatedBy": by,
                "Size": crate::human_size(size),
                "Comment": h.comment.clone().unwrap_or_default(),
            })
        })
        .collect();
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first["ID"] = json!(if no_trunc {
            format!("sha256:{}", image.id)
        } else {
            image.id.get(..12).unwrap_or(&image.id).to_string()
        });
    }
    rows
}

/// `NAME:TAG` split at the tag's colon (not a registry port's).
fn split_tag(tag: &str) -> (&str, &str) {
    match tag.rsplit_once(':') {
        Some((repo, t)) if !t.contains('/') => (repo, t),
        _ => (tag, "<none>"),
    }
}

/// The rows of `images --format`: one per tag (one `<none>` row for an untagged
/// image), Docker's fields, all strings. `Size` is what the unpacked image takes on the
/// host's disk; Arca keeps no digests yet (`<none>`).
pub fn image_rows(images: &[Image], at: u64, no_trunc: bool) -> Vec<Value> {
    let mut rows = Vec::new();
    for i in images {
        let size = crate::human_size(i.usage());
        let id = if no_trunc {
            format!("sha256:{}", i.id)
        } else {
            i.id.get(..12).unwrap_or(&i.id).to_string()
        };
        let created = i.config.created.as_deref().and_then(parse_rfc3339);
        let since = created.map_or("N/A".to_string(), |c| {
            format!("{} ago", human_duration(at.saturating_sub(c)))
        });
        let created_at = created.map_or(String::new(), go_time);
        let names: Vec<(&str, &str)> = if i.tags.is_empty() {
            vec![("<none>", "<none>")]
        } else {
            i.tags.iter().map(|t| split_tag(t)).collect()
        };
        for (repo, tag) in names {
            rows.push(json!({
                "ID": id,
                "Repository": repo,
                "Tag": tag,
                "Digest": "<none>",
                "CreatedSince": since,
                "CreatedAt": created_at,
                "Size": size,
                "Containers": "N/A",
                "VirtualSize": size,
                "SharedSize": "N/A",
                "UniqueSize": "N/A",
            }));
        }
    }
    rows
}

/// `arca images [--format FORMAT]`: the text to print (Docker's table without a
/// format).
pub fn images_formatted(
    images: &[Image],
    at: u64,
    format: Option<&str>,
    no_trunc: bool,
) -> Result<String, TemplateError> {
    render_list(
        &ListFormat::new(format.unwrap_or(IMAGES_TABLE), IMAGES_TABLE),
        &images_header(),
        &image_rows(images, at, no_trunc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::store::HistoryEntry;

    #[test]
    fn tags_split_at_the_tag_colon() {
        assert_eq!(split_tag("debian:bookworm"), ("debian", "bookworm"));
        assert_eq!(
            split_tag("localhost:5000/app:v1"),
            ("localhost:5000/app", "v1")
        );
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app", "<none>")
        );
    }

    #[test]
    fn history_is_newest_first_with_layer_sizes_on_the_steps_that_made_layers() {
        let step = |by: &str, empty: bool| HistoryEntry {
            created: Some("2026-12-01T00:00:00Z".into()),
            created_by: Some(by.into()),
            empty_layer: empty,
            comment: None,
        };
        let mut image = Image {
            id: "ab".repeat(32),
            config: Default::default(),
            rootfs: "/nonexistent".into(),
            tags: vec!["x:latest".into()],
        };
        image.config.history = vec![
            step(
                "/bin/sh -c #(nop) ADD file:0123456789abcdef0123456789abcdef in /",
                false,
            ),
            step("/bin/sh -c #(nop)  CMD [\"sh\"]", true),
            step("RUN make", false),
        ];
        let at = 1_796_526_123;
        let rows = history_rows(&image, &[4_000_000, 1500], at, false);
        let col = |k: &str| {
            rows.iter()
                .map(|r| r[k].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(col("ID"), ["abababababab", "<missing>", "<missing>"]);
        assert_eq!(col("Size"), ["1.5kB", "0B", "4MB"]);
        assert_eq!(col("CreatedSince")[0], "5 days ago");
        assert_eq!(
            col("CreatedBy")[2],
            "/bin/sh -c #(nop) ADD file:0123456789abcdef0…"
        );
        let whole = history_rows(&image, &[4_000_000, 1500], at, true);
        assert_eq!(whole[0]["ID"], format!("sha256:{}", "ab".repeat(32)));
        assert!(whole[2]["CreatedBy"].as_str().unwrap().ends_with("in /"));
    }
}
