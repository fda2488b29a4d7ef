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
        let size = crate::human_size(crate::storage::disk_usage(&i.rootfs));
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
    use super::split_tag;

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
}
