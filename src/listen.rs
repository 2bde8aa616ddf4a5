//! Unix sockets that appear only once they accept connections.
//!
//! `bind` creates the socket file and `listen` comes after it, so a client that sees the
//! file (a test harness, QEMU's reconnect loop, a script waiting for it) may connect in
//! between and be refused. Binding under a temporary name in the same directory, listening
//! and setting the mode there, and then renaming the file into place makes the path appear
//! already listening: a bound socket keeps working under a new name.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Longest socket path the kernel takes (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds and listens on `path` (which must not exist), with file mode `mode` if given; the
/// path exists only once connections are accepted. When the temporary name would be too
/// long for a socket address, binds `path` directly.
pub fn listen_published(path: &Path, mode: Option<u32>) -> io::Result<UnixListener> {
    let staging = staging_path(path);
    let bind_at = match &staging {
        Some(tmp) if tmp.as_os_str().len() <= MAX_SOCKET_PATH => tmp.as_path(),
        _ => path,
    };
    if bind_at != path {
        // A staging file left by a crashed process that had our pid.
        let _ = std::fs::remove_file(bind_at);
    }
    let listener = UnixListener::bind(bind_at)?;
    let published = (|| {
        if let Some(mode) = mode {
            std::fs::set_permissions(bind_at, std::fs::Permissions::from_mode(mode))?;
        }
        if bind_at != path {
            std::fs::rename(bind_at, path)?;
        }
        Ok(())
    })();
    if let Err(e) = published {
        let _ = std::fs::remove_file(bind_at);
        return Err(e);
    }
    Ok(listener)
}

/// `.<name>.<pid>.binding` beside `path`.
fn staging_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.{}.binding", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_socket_appears_listening_with_its_mode_and_nothing_is_left_behind() {
        let dir = std::env::temp_dir().join(format!("vs-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p0.sock");
        let _ = std::fs::remove_file(&path);
        let listener = listen_published(&path, Some(0o600)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let _client = UnixStream::connect(&path).unwrap();
        assert!(listener.accept().is_ok());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p0.sock"], "no staging file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_too_long_for_a_staging_name_is_bound_directly() {
        let dir = std::env::temp_dir().join(format!("vs-listen-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Fits a socket address, but not with the staging prefix and suffix added.
        let room = MAX_SOCKET_PATH - dir.as_os_str().len() - 1;
        let path = dir.join("s".repeat(room));
        let _listener = listen_published(&path, None).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
