//! Rewriting the store's file after an erasure, so that what the erasure deleted leaves it.
//!
//! redb frees the pages of what is deleted and reuses them later, but does not clear them:
//! until then the bodies, the case files and the records with case ids that the start's
//! erasure pass deleted or rewrote stay in the file, readable with a text editor, and in every
//! copy of it. So once that pass has run, the start copies the store, table by table, into a
//! new file, which then takes the old one's place: the new file holds only what the store still
//! holds, and the old file's blocks go back to the file system.
//!
//! Written by hand: redb has no copy of a database (its compaction moves pages within the
//! file, and does not clear the ones it frees).

use super::{
    ACCEPTED, BODIES, CASE_IDS_FORGOTTEN, CASES, DEAD, DELIVERIES, DUE, FORMAT, INBOX, MARKS, OWED,
    Result, Store, StoreError, UNCONFIRMED, db_error,
};
use redb::{
    MultimapTableHandle, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};
use std::path::{Path, PathBuf};

/// The mark of how many erased cases the file was last rewritten after: the rewrite is due
/// while it is below [`CASE_IDS_FORGOTTEN`].
const FILE_REWRITTEN: &str = "file-rewritten-after-erasures";

/// What [`Store::rewrite_file`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Rows copied, every table together.
    pub rows: u64,
    /// The old file's size, in bytes.
    pub bytes_before: u64,
    /// The new file's size, in bytes.
    pub bytes_after: u64,
}

impl Store {
    /// Whether the file may still hold what an erasure pass deleted: the start took erased
    /// cases' ids off the records (see [`Store::forget_case_ids`]) since the file was last
    /// rewritten.
    pub fn rewrite_due(&self) -> Result<bool> {
        Ok(self.mark(CASE_IDS_FORGOTTEN)? > self.mark(FILE_REWRITTEN)?)
    }

    /// Copies every table into a new file beside `path` (the file this store was opened
    /// from), synced, then puts it in the old file's place and syncs the folder.
    ///
    /// The store itself goes on reading and writing the old file, which no longer has a name:
    /// call it at start, when nothing writes, then close this store and open `path` again.
    /// A crash before the new file takes the old one's place leaves the old file, with the
    /// rewrite still due; a new file left half written is replaced at the next try. A table the
    /// rewrite does not know (of a later version) stops it, rather than be left behind.
    pub fn rewrite_file(&self, path: &Path) -> Result<Rewritten> {
        let copy_path = copy_path(path);
        match std::fs::remove_file(&copy_path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(db_error(format!("{}: {error}", copy_path.display())));
            }
            _ => {}
        }
        let r = self.db.begin_read().map_err(db_error)?;
        check_every_table_known(&r)?;
        let forgotten = self.mark(CASE_IDS_FORGOTTEN)?;
        let copy = redb::Builder::new().create(&copy_path).map_err(db_error)?;
        let mut rows = 0;
        rows += copy_table(&r, &copy, ACCEPTED)?;
        rows += copy_table(&r, &copy, CASES)?;
        rows += copy_table(&r, &copy, DELIVERIES)?;
        rows += copy_table(&r, &copy, BODIES)?;
        rows += copy_table(&r, &copy, INBOX)?;
        rows += copy_table(&r, &copy, DUE)?;
        rows += copy_table(&r, &copy, DEAD)?;
        rows += copy_table(&r, &copy, UNCONFIRMED)?;
        rows += copy_table(&r, &copy, OWED)?;
        rows += copy_table(&r, &copy, FORMAT)?;
        rows += copy_table(&r, &copy, MARKS)?;
        {
            let w = copy.begin_write().map_err(db_error)?;
            w.open_table(MARKS)
                .map_err(db_error)?
                .insert(FILE_REWRITTEN, forgotten)
                .map_err(db_error)?;
            w.commit().map_err(db_error)?;
        }
        drop(copy);
        let size = |file: &Path| {
            std::fs::metadata(file)
                .map(|m| m.len())
                .map_err(|error| db_error(format!("{}: {error}", file.display())))
        };
        let bytes_before = size(path)?;
        let bytes_after = size(&copy_path)?;
        std::fs::rename(&copy_path, path)
            .map_err(|error| db_error(format!("{}: {error}", path.display())))?;
        sync_folder(path)?;
        Ok(Rewritten {
            rows,
            bytes_before,
            bytes_after,
        })
    }
}

/// Where the new file is written before it takes `path`'s place.
fn copy_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rewrite");
    path.with_file_name(name)
}

/// Refuses a file with a table that [`Store::rewrite_file`] would not copy.
fn check_every_table_known(r: &ReadTransaction) -> Result<()> {
    let known = [
        ACCEPTED.name(),
        CASES.name(),
        DELIVERIES.name(),
        BODIES.name(),
        INBOX.name(),
        DUE.name(),
        DEAD.name(),
        UNCONFIRMED.name(),
        OWED.name(),
        FORMAT.name(),
        MARKS.name(),
    ];
    let mut unknown: Vec<String> = r
        .list_tables()
        .map_err(db_error)?
        .map(|table| table.name().to_owned())
        .filter(|name| !known.contains(&name.as_str()))
        .collect();
    unknown.extend(
        r.list_multimap_tables()
            .map_err(db_error)?
            .map(|table| table.name().to_owned()),
    );
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Refused(format!(
            "the store has tables this version does not know ({}); it is not rewritten",
            unknown.join(", ")
        )))
    }
}

/// Rows copied in one transaction of the new file: a large store is not copied in one.
const ROWS_A_TRANSACTION: u64 = 20_000;

/// Copies `table` from `r` into `copy`, in transactions of a bounded size, and says how many
/// rows. A table the old file does not have is not made.
fn copy_table<K, V>(
    r: &ReadTransaction,
    copy: &redb::Database,
    table: TableDefinition<K, V>,
) -> Result<u64>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let from = match r.open_table(table) {
        Ok(from) => from,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(error) => return Err(db_error(error)),
    };
    let mut rows = 0;
    let mut w = copy.begin_write().map_err(db_error)?;
    let mut to = w.open_table(table).map_err(db_error)?;
    for item in from.iter().map_err(db_error)? {
        let (key, value) = item.map_err(db_error)?;
        to.insert(key.value(), value.value()).map_err(db_error)?;
        rows += 1;
        if rows % ROWS_A_TRANSACTION == 0 {
            drop(to);
            w.commit().map_err(db_error)?;
            w = copy.begin_write().map_err(db_error)?;
            to = w.open_table(table).map_err(db_error)?;
        }
    }
    drop(to);
    w.commit().map_err(db_error)?;
    Ok(rows)
}

/// Syncs the folder of `path`, so that the rename that put the new file there is durable.
fn sync_folder(path: &Path) -> Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(folder)
        .and_then(|f| f.sync_all())
        .map_err(|error| db_error(format!("{}: {error}", folder.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{accept, new_delivery};
    use crate::store::{Channel, DeliveryUpdate};

    fn holds(path: &Path, text: &str) -> bool {
        let file = std::fs::read(path).unwrap();
        file.windows(text.len()).any(|w| w == text.as_bytes())
    }

    /// A deleted body stays in the file's free pages until the file is rewritten; the rewrite
    /// keeps everything the store still holds, marks included, and is due once again only after
    /// a further erasure.
    #[tokio::test]
    async fn a_rewritten_file_holds_what_the_store_holds_and_nothing_it_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        assert!(!store.rewrite_due().unwrap());
        let mut gone = new_delivery("iom.ma", Channel::Webhook);
        gone.body = "DIOP Awa, born 1998-03-14 in Thiès. "
            .repeat(200)
            .into_bytes();
        let mut kept = new_delivery("ma.dgsn", Channel::Inbox);
        kept.body = b"{\"still\":\"waiting\"}".to_vec();
        let made = accept(&store, "e1", vec![gone, kept]).await;
        store
            .update(made[0].id, DeliveryUpdate::Delivered)
            .await
            .unwrap();
        store.mark_erasures_withdrawn(1).unwrap();
        store.mark_case_ids_forgotten(1).unwrap();
        assert!(store.delivery(made[0].id).unwrap().unwrap().body.is_empty());
        assert!(holds(&path, "DIOP Awa"), "redb clears no freed page");
        assert!(store.rewrite_due().unwrap());

        let rewritten = store.rewrite_file(&path).unwrap();
        store.close().unwrap();
        assert!(rewritten.rows > 0, "{rewritten:?}");
        assert!(!holds(&path, "DIOP Awa"));
        assert!(!copy_path(&path).exists());

        let store = Store::open(&path).unwrap();
        assert!(!store.rewrite_due().unwrap());
        assert_eq!(store.erasures_withdrawn().unwrap(), 1);
        assert_eq!(store.case_ids_forgotten().unwrap(), 1);
        let waiting = store.delivery(made[1].id).unwrap().unwrap();
        assert_eq!(waiting.body, b"{\"still\":\"waiting\"}");
        assert!(store.in_inbox("ma.dgsn", made[1].id).unwrap());
        assert!(store.accepted("urn:partner:test", "e1").unwrap().is_some());
        assert_eq!(store.pending_deliveries(), 1);
        // New deliveries take ids after the copied ones.
        let next = accept(&store, "e2", vec![new_delivery("iom.ma", Channel::Webhook)]).await;
        assert!(next[0].id > made[1].id);
        store.mark_case_ids_forgotten(2).unwrap();
        assert!(store.rewrite_due().unwrap());
        store.close().unwrap();
    }

    /// A table the rewrite would not copy stops it, and the file stays as it was.
    #[test]
    fn a_table_the_rewrite_does_not_know_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        {
            let w = store.db.begin_write().unwrap();
            let later: TableDefinition<u64, u64> = TableDefinition::new("of-a-later-version");
            w.open_table(later).unwrap().insert(1, 1).unwrap();
            w.commit().unwrap();
        }
        match store.rewrite_file(&path) {
            Err(StoreError::Refused(why)) => assert!(why.contains("of-a-later-version"), "{why}"),
            other => panic!("rewritten: {other:?}"),
        }
        assert!(!copy_path(&path).exists());
        store.close().unwrap();
    }
}
