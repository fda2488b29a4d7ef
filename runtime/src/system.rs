//! `arca system df` and `arca system prune`: what images, containers and volumes take
//! on the host's disk, and removing what nothing uses, as Docker's. Sizes are blocks on
//! the host's disk (a microVM's sparse writable disk counts what it holds); volumes
//! count their files' bytes, as `volume prune` reports them.

use std::path::Path;

use crate::container::lifecycle;
use crate::container::names::containers_dir;
use crate::container::record::{Status, list};
use crate::error::RunError;
use crate::image::store::Store;
use crate::volume;

/// One line of `system df`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfRow {
    /// `Images`, `Containers`, `Local Volumes`, `Build Cache`.
    pub kind: &'static str,
    /// How many there are.
    pub total: usize,
    /// How many are in use (images by a container, running containers, volumes named
    /// by a container).
    pub active: usize,
    /// Bytes of all of them.
    pub size: u64,
    /// Bytes of those not in use.
    pub reclaimable: u64,
}

/// `arca system df`'s figures.
pub fn df(state: &Path) -> Result<Vec<DfRow>, RunError> {
    let containers = list(state);
    let store = Store::open(state)?;
    let mut images = DfRow {
        kind: "Images",
        total: 0,
        active: 0,
        size: 0,
        reclaimable: 0,
    };
    for i in store.list()? {
        let size = i.usage();
        images.total += 1;
        images.size += size;
        if containers.iter().any(|c| c.image_id == i.id) {
            images.active += 1;
        } else {
            images.reclaimable += size;
        }
    }
    let mut ctrs = DfRow {
        kind: "Containers",
        total: 0,
        active: 0,
        size: 0,
        reclaimable: 0,
    };
    for c in &containers {
        let dir = containers_dir(state).join(c.key());
        let size = crate::storage::layer_usage(&dir);
        ctrs.total += 1;
        ctrs.size += size;
        if matches!(
            c.status,
            Status::Running | Status::Starting | Status::Restarting
        ) {
            ctrs.active += 1;
        } else {
            ctrs.reclaimable += size;
        }
    }
    let used = volume::in_use(state);
    let mut vols = DfRow {
        kind: "Local Volumes",
        total: 0,
        active: 0,
        size: 0,
        reclaimable: 0,
    };
    for v in volume::list(state)? {
        let size = volume::dir_size(&volume::data_dir(state, &v.name));
        vols.total += 1;
        vols.size += size;
        if used.contains_key(&v.name) {
            vols.active += 1;
        } else {
            vols.reclaimable += size;
        }
    }
    let cache = DfRow {
        kind: "Build Cache",
        total: 0,
        active: 0,
        size: 0,
        reclaimable: 0,
    };
    Ok(vec![images, ctrs, vols, cache])
}

/// `system df` as Docker prints it.
pub fn df_table(rows: &[DfRow]) -> String {
    let mut out = format!(
        "{:<16}{:<10}{:<10}{:<10}{}\n",
        "TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"
    );
    for r in rows {
        let reclaimable = match (r.reclaimable * 100).checked_div(r.size) {
            Some(percent) => format!("{} ({percent}%)", crate::human_size(r.reclaimable)),
            None => crate::human_size(r.reclaimable),
        };
        out.push_str(&format!(
            "{:<16}{:<10}{:<10}{:<10}{}\n",
            r.kind,
            r.total,
            r.active,
            crate::human_size(r.size),
            reclaimable
        ));
    }
    out
}

/// What `system prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Container IDs.
    pub containers: Vec<String>,
    /// Network names.
    pub networks: Vec<String>,
    /// Volume names.
    pub volumes: Vec<String>,
    /// `untagged: ...` and `deleted: sha256:...` lines.
    pub images: Vec<String>,
    /// Bytes freed.
    pub freed: u64,
}

/// `arca system prune [-a] [--volumes]`: stopped containers, then networks no
/// container uses, then (with `volumes`) anonymous volumes no container names, then
/// dangling images (every unused one with `all_images`), in Docker's order; then the
/// warm-start templates (made again at the next run).
pub fn prune(state: &Path, all_images: bool, volumes: bool) -> Result<Pruned, RunError> {
    let mut p = Pruned::default();
    let (containers, freed) = lifecycle::prune(state, &[])?;
    (p.containers, p.freed) = (containers, freed);
    p.networks = crate::network::prune(state)?;
    if volumes {
        let (names, freed) = volume::prune(state, false)?;
        p.volumes = names;
        p.freed += freed;
    }
    let (images, freed) = Store::open(state)?.prune(all_images)?;
    p.images = images;
    p.freed += freed;
    p.freed += crate::sandbox::template::prune(state);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::{DfRow, df_table};

    #[test]
    fn df_prints_dockers_table() {
        let rows = [
            DfRow {
                kind: "Images",
                total: 2,
                active: 1,
                size: 4_000_000,
                reclaimable: 1_000_000,
            },
            DfRow {
                kind: "Build Cache",
                total: 0,
                active: 0,
                size: 0,
                reclaimable: 0,
            },
        ];
        assert_eq!(
            df_table(&rows),
            "TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE\n\
             Images          2         1         4MB       1MB (25%)\n\
             Build Cache     0         0         0B        0B\n"
        );
    }
}
