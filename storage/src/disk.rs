//! What the data dir's file system allows and how it is mounted, probed
//! once when the store opens.

use std::path::{Path, PathBuf};

/// Whether files in `dir` can be opened for direct I/O (some file systems
/// refuse it, and RocksDB would then fail its first flush). Creates `dir`
/// if it is missing, as opening the database would.
pub(crate) fn supports_direct_io(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{Mode, OFlags};
        if std::fs::create_dir_all(dir).is_err() {
            return false;
        }
        let probe = dir.join("DIRECT_IO_PROBE");
        let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC;
        let opened = rustix::fs::open(&probe, flags, Mode::from_raw_mode(0o600)).is_ok();
        let _ = std::fs::remove_file(&probe);
        opened
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// Whether the file system holding `dir` is mounted with online discard
/// (`discard`): it then trims every freed extent inside its journal
/// commits, and an fsync that needs one (a group commit's) waits for the
/// trims of every table file and WAL that RocksDB deleted since the last.
/// False when unknown (no `/proc/self/mounts`).
pub(crate) fn online_discard(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|mounts| mount_options(&mounts, &dir))
        .is_some_and(|options| options.split(',').any(|o| o == "discard"))
}

/// The options of the mount that holds `path` (absolute, canonical): the
/// last listed among those with the longest mount point containing it, as
/// a later mount hides an earlier one on the same point.
fn mount_options(mounts: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_device), Some(point), Some(_fs_type), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = unescape(point);
        if !path.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        if best
            .as_ref()
            .is_none_or(|(best_depth, _)| depth >= *best_depth)
        {
            best = Some((depth, options.to_owned()));
        }
    }
    best.map(|(_, options)| options)
}

/// Undoes the octal escapes of `/proc/self/mounts` (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::mount_options;
    use std::path::Path;

    const MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime,discard 0 0
proc /proc proc rw,nosuid 0 0
/dev/vdb /var/lib/troupe xfs rw,noatime 0 0
/dev/vdc /var/lib/troupe\\040fast ext4 rw,discard,noatime 0 0
/dev/vdd /mnt ext4 rw 0 0
/dev/vde /mnt ext4 rw,discard 0 0
";

    fn options(path: &str) -> Option<String> {
        mount_options(MOUNTS, Path::new(path))
    }

    #[test]
    fn the_deepest_mount_holding_the_path_decides() {
        assert_eq!(options("/var/lib/troupe/data").unwrap(), "rw,noatime");
        assert_eq!(options("/var/lib/troupe").unwrap(), "rw,noatime");
        assert_eq!(options("/tmp/troupe").unwrap(), "rw,relatime,discard");
        // A sibling whose name only starts like a mount point is not in it.
        assert_eq!(options("/var/lib/troupe2").unwrap(), "rw,relatime,discard");
    }

    #[test]
    fn escaped_mount_points_and_stacked_mounts_are_read() {
        assert_eq!(
            options("/var/lib/troupe fast/data").unwrap(),
            "rw,discard,noatime"
        );
        // The later of two mounts on one point hides the earlier.
        assert_eq!(options("/mnt/x").unwrap(), "rw,discard");
    }

    #[test]
    fn no_mount_table_means_unknown() {
        assert_eq!(mount_options("", Path::new("/data")), None);
        assert_eq!(mount_options("garbage\n", Path::new("/data")), None);
    }
}
