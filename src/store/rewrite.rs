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
    ACCEPTED, BODIES, CACHE_BYTES, CASE_IDS_FORGOTTEN, CASES, DEAD, DELIVERIES, DUE, FORMAT, INBOX,
    MARKS, OWED, Result, Store, StoreError, UNCONFIRMED, db_error,
};
use redb::{
    MultimapTableHandle, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};
use std::path::{Path, PathBuf};

/// The mark of how many erased cases the file was last rewritten after: the rewrite is due
/// while it is below [`CASE_IDS_FORGOTTEN`].
const FILE_REWRITTEN: &str = "file-rewritten-after-erasures";

/// Why [`Store::rewrite_file`] failed, and what became of the store's file.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The file is as it was (the copy, if any, removed): the store goes on with it, and the
    /// rewrite stays due.
    #[error("the store's file was not rewritten: {0}")]
    NotMade(StoreError),
    /// The new file took the old one's place, but its folder could not be synced: the store
    /// must be opened again (it still works on the old file, which has no name any more),
    /// and a crash may yet bring the old file back.
    #[error("the rewritten file is in place, but its folder could not be synced: {0}")]
    FolderNotSynced(StoreError),
}

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

    /// Copies every table into a new file beside the store's own, synced, then puts it in the
    /// old file's place and syncs the folder.
    ///
    /// The store itself goes on reading and writing the old file, which no longer has a name:
    /// call it at start, when nothing writes, then close this store and open its file again.
    /// A failure (a full disk, say) removes the copy and leaves the old file, with the rewrite
    /// still due; so does a crash, and a copy left by it is replaced at the next try. A table
    /// the rewrite does not know (of a later version) fails it, rather than be left behind.
    pub fn rewrite_file(&self) -> std::result::Result<Rewritten, RewriteError> {
        let path = self.path.as_path();
        let copy_path = copy_path(path);
        remove_copy(&copy_path).map_err(RewriteError::NotMade)?;
        let rewritten = self.write_copy(&copy_path).and_then(|rows| {
            let size = |file: &Path| {
                std::fs::metadata(file)
                    .map(|m| m.len())
                    .map_err(|error| db_error(format!("{}: {error}", file.display())))
            };
            Ok(Rewritten {
                rows,
                bytes_before: size(path)?,
                bytes_after: size(&copy_path)?,
            })
        });
        let rewritten = match rewritten {
            Ok(rewritten) => rewritten,
            Err(error) => {
                // A copy left half made would hold personal data, and the disk space it took.
                let _ = remove_copy(&copy_path);
                return Err(RewriteError::NotMade(error));
            }
        };
        if let Err(error) = std::fs::rename(&copy_path, path) {
            let _ = remove_copy(&copy_path);
            return Err(RewriteError::NotMade(db_error(format!(
                "{}: {error}",
                path.display()
            ))));
        }
        sync_folder(path).map_err(RewriteError::FolderNotSynced)?;
        Ok(rewritten)
    }

    /// Writes the copy, every table and then the mark, each commit synced, and says how many
    /// rows it copied. A table of the old file that it did not copy fails it.
    fn write_copy(&self, copy_path: &Path) -> Result<u64> {
        let r = self.db.begin_read().map_err(db_error)?;
        let forgotten = self.mark(CASE_IDS_FORGOTTEN)?;
        // The same small page cache as the store's: a large store is not read into memory.
        let copy = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(copy_path)
            .map_err(db_error)?;
        let mut copied = Copied::default();
        copied.table(&r, &copy, ACCEPTED)?;
        copied.table(&r, &copy, CASES)?;
        copied.table(&r, &copy, DELIVERIES)?;
        copied.table(&r, &copy, BODIES)?;
        copied.table(&r, &copy, INBOX)?;
        copied.table(&r, &copy, DUE)?;
        copied.table(&r, &copy, DEAD)?;
        copied.table(&r, &copy, UNCONFIRMED)?;
        copied.table(&r, &copy, OWED)?;
        copied.table(&r, &copy, FORMAT)?;
        copied.table(&r, &copy, MARKS)?;
        copied.check_every_table_copied(&r)?;
        let w = copy.begin_write().map_err(db_error)?;
        w.open_table(MARKS)
            .map_err(db_error)?
            .insert(FILE_REWRITTEN, forgotten)
            .map_err(db_error)?;
        w.commit().map_err(db_error)?;
        Ok(copied.rows)
    }
}

/// What [`Store::write_copy`] has copied so far.
#[derive(Default)]
struct Copied {
    rows: u64,
    tables: Vec<String>,
}

impl Copied {
    /// Copies `table` from `r` into `copy`, in transactions of a bounded size. A table the
    /// old file does not have is not made.
    fn table<K, V>(
        &mut self,
        r: &ReadTransaction,
        copy: &redb::Database,
        table: TableDefinition<K, V>,
    ) -> Result<()>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
    {
        self.tables.push(table.name().to_owned());
        let from = match r.open_table(table) {
            Ok(from) => from,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
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
        self.rows += rows;
        Ok(())
    }

    /// Refuses a file with a table that was not copied (of a later version): it would be
    /// left behind.
    fn check_every_table_copied(&self, r: &ReadTransaction) -> Result<()> {
        let mut left: Vec<String> = r
            .list_tables()
            .map_err(db_error)?
            .map(|table| table.name().to_owned())
            .filter(|name| !self.tables.contains(name))
            .collect();
        left.extend(
            r.list_multimap_tables()
                .map_err(db_error)?
                .map(|table| table.name().to_owned()),
        );
        if left.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Refused(format!(
                "the store has tables this version does not know ({}); it is not rewritten",
                left.join(", ")
            )))
        }
    }
}

/// Removes the copy at `copy_path`, if there is one.
fn remove_copy(copy_path: &Path) -> Result<()> {
    match std::fs::remove_file(copy_path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(db_error(format!("{}: {error}", copy_path.display())))
        }
        _ => Ok(()),
    }
}

/// Where the new file is written before it takes `path`'s place.
fn copy_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rewrite");
    path.with_file_name(name)
}

/// Rows copied in one transaction of the new file: a large store is not copied in one.
const ROWS_A_TRANSACTION: u64 = 20_000;

/// Syncs the folder of `path`, so that the rename that put the new file there is durable.
fn sync_folder(path: &Path) -> Result<()> {
    crate::durable_folders::sync_parent(path).map_err(|error| {
        let folder = path.parent().unwrap_or(Path::new("."));
        db_error(format!("{}: {error}", folder.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{accept, new_delivery, record};
    use crate::store::{Channel, DeliveryUpdate, UNWRITABLE};
    use redb::ReadableTableMetadata;
    use std::collections::BTreeMap;

    fn holds(path: &Path, text: &str) -> bool {
        let file = std::fs::read(path).unwrap();
        file.windows(text.len()).any(|w| w == text.as_bytes())
    }

    /// The number of rows of every table of a file.
    fn row_counts(r: &ReadTransaction) -> BTreeMap<String, u64> {
        r.list_tables()
            .unwrap()
            .map(|table| {
                let name = table.name().to_owned();
                (name, r.open_untyped_table(table).unwrap().len().unwrap())
            })
            .collect()
    }

    /// A deleted body stays in the file's free pages until the file is rewritten; the rewrite
    /// keeps every row of every table, marks included, and is due once again only after a
    /// further erasure. A copy left by an earlier try is replaced.
    #[tokio::test]
    async fn a_rewritten_file_holds_what_the_store_holds_and_nothing_it_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        assert!(!store.rewrite_due().unwrap());
        // Large enough (many pages) that the commits which follow, reusing a freed page or two
        // for their own writes, cannot overwrite all of it.
        let mut gone = new_delivery("iom.ma", Channel::Webhook);
        gone.body = "DIOP Awa, born 1998-03-14 in Thiès. "
            .repeat(5_000)
            .into_bytes();
        let mut kept = new_delivery("ma.dgsn", Channel::Inbox);
        kept.body = b"{\"still\":\"waiting\"}".to_vec();
        let mut unwritable = new_delivery("iom.sn", Channel::Webhook);
        unwritable.unwritable = Some(UNWRITABLE.into());
        let pushed = new_delivery("ma.interieur", Channel::Webhook);
        let made = accept(&store, "e1", vec![gone, kept, unwritable, pushed]).await;
        // One message recorded and not confirmed: an acceptance whose log entry is not known.
        let mut unconfirmed = record("e2");
        store
            .record_accepted(&mut unconfirmed, Vec::new())
            .await
            .unwrap();
        store
            .update(made[0].id, DeliveryUpdate::Delivered)
            .await
            .unwrap();
        store.mark_erasures_withdrawn(1).unwrap();
        store.mark_case_ids_forgotten(1).unwrap();
        assert!(store.delivery(made[0].id).unwrap().unwrap().body.is_empty());
        assert!(holds(&path, "DIOP Awa"), "redb clears no freed page");
        assert!(store.rewrite_due().unwrap());
        let before = row_counts(&store.db.begin_read().unwrap());
        for table in [
            ACCEPTED.name(),
            DELIVERIES.name(),
            BODIES.name(),
            INBOX.name(),
            DUE.name(),
            DEAD.name(),
            UNCONFIRMED.name(),
            OWED.name(),
            FORMAT.name(),
            MARKS.name(),
        ] {
            assert!(
                before.get(table).is_some_and(|&n| n > 0),
                "{table}: {before:?}"
            );
        }
        std::fs::write(copy_path(&path), b"left by a crash").unwrap();

        let rewritten = store.rewrite_file().unwrap();
        store.close().unwrap();
        assert!(rewritten.rows > 0, "{rewritten:?}");
        assert!(!holds(&path, "DIOP Awa"));
        assert!(!copy_path(&path).exists());

        let store = Store::open(&path).unwrap();
        let mut after = row_counts(&store.db.begin_read().unwrap());
        // The one row the rewrite adds: its own mark.
        *after.get_mut(MARKS.name()).unwrap() -= 1;
        assert_eq!(after, before);
        assert!(!store.rewrite_due().unwrap());
        assert_eq!(store.erasures_withdrawn().unwrap(), 1);
        assert_eq!(store.case_ids_forgotten().unwrap(), 1);
        let waiting = store.delivery(made[1].id).unwrap().unwrap();
        assert_eq!(waiting.body, b"{\"still\":\"waiting\"}");
        assert!(store.in_inbox("ma.dgsn", made[1].id).unwrap());
        assert_eq!(store.owed_audits().unwrap().len(), 1);
        assert_eq!(store.unconfirmed().unwrap().len(), 1);
        assert_eq!(store.pending_deliveries(), 2);
        // New deliveries take ids after the copied ones.
        let next = accept(&store, "e3", vec![new_delivery("iom.ma", Channel::Webhook)]).await;
        assert!(next[0].id > made[3].id);
        store.mark_case_ids_forgotten(2).unwrap();
        assert!(store.rewrite_due().unwrap());
        store.close().unwrap();
    }

    /// A table the rewrite would not copy fails it: the copy is removed, the file stays.
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
        let before = std::fs::read(&path).unwrap();
        match store.rewrite_file() {
            Err(RewriteError::NotMade(StoreError::Refused(why))) => {
                assert!(why.contains("of-a-later-version"), "{why}")
            }
            other => panic!("rewritten: {other:?}"),
        }
        assert!(!copy_path(&path).exists());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        store.close().unwrap();
    }
}
