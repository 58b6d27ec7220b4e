//! Folders whose new entries survive a crash. A file's own sync makes its bytes durable, not
//! its name: the name lives in the folder, which needs a sync of its own. This module owns
//! those syncs, and the one way the gateway writes a small file whole: over the old one
//! ([`replace_file`]) or where there was none ([`create_file`]).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read a file that [`replace_file`] or [`create_file`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Its owner only (mode 0600): keys, records of the gateway's own.
    Owner,
    /// Whoever the process's umask lets read it (mode 0666 less the umask): files published
    /// for others to read, such as the audit log's public checkpoint.
    AsTheUmaskSays,
}

/// Replaces the contents of `path` by `data`, atomically and durably: written to a temporary
/// file beside it (its name and `.tmp`), synced, renamed over `path`, and the folder synced. A
/// crash leaves either the old contents or the new, never a part; a failure leaves the old
/// contents, and no temporary file.
pub fn replace_file(path: &Path, data: &[u8], readers: Readers) -> io::Result<()> {
    stage_file(path, data, readers)?.replace()
}

/// Creates `path` with `data`, whole and durably, or fails with
/// [`io::ErrorKind::AlreadyExists`] when it is there: written and synced beside it as
/// [`replace_file`] does, then linked to its name, which fails rather than write over another
/// file. A failure (a full disk, say) leaves neither `path` nor a part of it: a key or a
/// bundle cut short would stand in the way of the next try, and be taken for a whole one.
///
/// The temporary file has a name of its own (the process's id and a count): `path` is the
/// caller's choice, and a file beside it of the usual temporary name may be someone else's, or
/// another run's writing to the same path.
pub fn create_file(path: &Path, data: &[u8], readers: Readers) -> io::Result<()> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let temporary = beside(
        path,
        &format!(
            ".{}-{}.tmp",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ),
    );
    write_beside(path, temporary, data, readers)?.create()
}

/// `path` with `suffix` added to its name: a file beside it.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A file's new contents, written whole and synced beside it, not yet in its place: put there
/// with [`Staged::replace`] or [`Staged::create`]. Dropped before, it is removed. Staging
/// several files first, and then putting each in place, leaves them all as they were when
/// writing one fails.
#[derive(Debug)]
pub struct Staged {
    temporary: PathBuf,
    path: PathBuf,
    in_place: bool,
}

/// Writes `data` to a temporary file beside `path` (its name and `.tmp`) and syncs it.
///
/// A temporary file left by a crash is removed first: opened again, it would keep its old
/// permissions, which `readers` would not change.
pub fn stage_file(path: &Path, data: &[u8], readers: Readers) -> io::Result<Staged> {
    let temporary = beside(path, ".tmp");
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    write_beside(path, temporary, data, readers)
}

/// Writes `data` to `temporary` (a new file beside `path`) and syncs it.
fn write_beside(
    path: &Path,
    temporary: PathBuf,
    data: &[u8],
    readers: Readers,
) -> io::Result<Staged> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if readers == Readers::Owner {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    // From here on, the temporary file is removed should anything fail.
    let staged = Staged {
        temporary,
        path: path.to_owned(),
        in_place: false,
    };
    file.write_all(data)?;
    file.sync_all()?;
    Ok(staged)
}

impl Staged {
    /// Renames the new contents over the file (made if missing) and syncs its folder.
    pub fn replace(mut self) -> io::Result<()> {
        std::fs::rename(&self.temporary, &self.path)?;
        self.in_place = true;
        sync_parent(&self.path)
    }

    /// Links the new contents to the file's name, failing with
    /// [`io::ErrorKind::AlreadyExists`] when a file has it, then syncs its folder.
    ///
    /// Should anything fail once it is linked (removing the temporary name, syncing the
    /// folder), the file is taken away again: a failure leaves nothing.
    pub fn create(mut self) -> io::Result<()> {
        std::fs::hard_link(&self.temporary, &self.path)?;
        let settled = std::fs::remove_file(&self.temporary).and_then(|()| sync_parent(&self.path));
        match settled {
            Ok(()) => self.in_place = true,
            Err(_) => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        settled
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.in_place {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Syncs a folder, so that the files and folders created or renamed in it are durable. An
/// empty path is the working folder.
pub fn sync_folder(folder: &Path) -> io::Result<()> {
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    std::fs::File::open(folder)?.sync_all()
}

/// Syncs the folder that names `path` (a file or folder just created or renamed there).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    sync_folder(path.parent().unwrap_or(Path::new("")))
}

/// Creates `folder` and the folders above it that are missing, each durably (the folder above
/// each new one is synced once it is made), and each closed to other users (mode 0700): the
/// gateway's folders hold personal data or keys.
pub fn create_folders(folder: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let missing: Vec<&Path> = folder
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| !a.exists())
        .collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)?;
    // From the outermost new folder in: each one's name is made durable in its parent.
    for made in missing.iter().rev() {
        sync_parent(made)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_the_missing_folders_and_syncs_what_names_them() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_folders(&deep).unwrap();
        assert!(deep.is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // Made again, nothing changes.
        create_folders(&deep).unwrap();
        sync_parent(&deep).unwrap();
        sync_folder(Path::new("")).unwrap();
        assert!(sync_folder(&root.path().join("missing")).is_err());
    }

    #[test]
    fn a_file_replaced_whole_is_closed_to_others_even_through_a_leftover_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("key");
        // A temporary file a crash left behind, readable by everyone.
        let leftover = root.path().join("key.tmp");
        std::fs::write(&leftover, "old").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_file(&path, b"secret", Readers::Owner).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert!(!leftover.exists());
        // Replaced again, for everyone the umask lets read it.
        replace_file(&path, b"public", Readers::AsTheUmaskSays).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"public");
        assert!(replace_file(&root.path().join("missing/key"), b"x", Readers::Owner).is_err());
    }

    #[test]
    fn a_file_created_whole_writes_over_nothing_and_leaves_nothing_when_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("bundle.json");
        create_file(&path, b"first", Readers::AsTheUmaskSays).unwrap();
        let refused = create_file(&path, b"second", Readers::AsTheUmaskSays).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["bundle.json"], "no temporary file left");
        // Someone's file of the usual temporary name is left alone.
        let theirs = root.path().join("other.json.tmp");
        std::fs::write(&theirs, "notes").unwrap();
        create_file(
            &root.path().join("other.json"),
            b"bundle",
            Readers::AsTheUmaskSays,
        )
        .unwrap();
        assert_eq!(std::fs::read(&theirs).unwrap(), b"notes");
    }

    #[test]
    fn staged_files_dropped_before_their_place_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("ca.pem");
        std::fs::write(&path, "old").unwrap();
        let staged = stage_file(&path, b"new", Readers::AsTheUmaskSays).unwrap();
        assert!(root.path().join("ca.pem.tmp").exists());
        drop(staged);
        assert!(!root.path().join("ca.pem.tmp").exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
