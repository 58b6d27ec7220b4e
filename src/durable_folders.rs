//! Folders whose new entries survive a crash. A file's own sync makes its bytes durable, not
//! its name: the name lives in the folder, which needs a sync of its own. This module owns
//! those syncs; it does not write files.

use std::io;
use std::path::Path;

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
}
