//! Giving back the executable's pages that only start-up used.
//!
//! Most of an idle daemon's resident memory is its own code: start-up (argument parsing, the
//! TOML reader, certificate generation, the admin router, ...) touches code all over the
//! executable, and the kernel maps 64 KiB around every code page fault (fault-around), so
//! about 5.5 MiB of the executable stays resident in each daemon although little of it runs
//! again (docs/benchmarks.md). Once a daemon is ready, and again shortly after its first
//! session with a tunnel or hub ([`session_up`]), [`release_startup_code`] asks the kernel to
//! reclaim the executable's read-only pages (`madvise(MADV_PAGEOUT)`, Linux 5.4 and later).
//! They are clean file pages, so nothing is written anywhere: code that runs again is read
//! back, from the page cache or the file, at its next use. Pages another process maps too
//! (a second daemon running the same file) are left alone by the kernel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after the first session [`session_up`] waits: until the session's link
/// connections are up and its first clients served, so their set-up code goes too.
const SETTLE: Duration = Duration::from_secs(2);

static ARMED: AtomicBool = AtomicBool::new(false);

/// Arms [`session_up`]. The daemon binaries call it; hubs and tunnels run inside another
/// program (tests, embedders) never have that program's pages released.
pub fn release_after_first_session() {
    ARMED.store(true, Ordering::Release);
}

/// A session is up: the hub welcomed a tunnel, or the tunnel was welcomed. The first time,
/// when armed, releases the start-up code [`SETTLE`] later: a session's set-up (TLS
/// handshakes, registration, link connections) is code that runs again only at the next
/// session. Needs a tokio runtime.
pub fn session_up() {
    if ARMED.swap(false, Ordering::AcqRel) {
        tokio::spawn(async {
            tokio::time::sleep(SETTLE).await;
            let advised = release_startup_code();
            tracing::debug!(
                advised_bytes = advised,
                "released the executable's pages of start-up and the first session"
            );
        });
    }
}

/// Asks the kernel to reclaim the pages of the running executable's read-only mappings (code
/// and constants). Returns how many bytes were advised; 0 where the kernel or the system call
/// filter refuses it, or on systems other than Linux. Changes no program state.
pub fn release_startup_code() -> usize {
    imp::release()
}

/// The read-only mappings of `exe` in a `/proc/PID/maps` listing, as `(start, length)`.
/// Writable mappings (data, heap) and other files are not included, nor an executable that was
/// replaced on disk (shown as `(deleted)`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn read_only_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            // offset, device, inode, then the path (which may contain spaces).
            let path = fields.nth(3)?;
            let rest: Vec<&str> = fields.collect();
            let path = if rest.is_empty() {
                path.to_owned()
            } else {
                format!("{path} {}", rest.join(" "))
            };
            if path != exe || perms.contains('w') || !perms.starts_with('r') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then(|| (start, end - start))
        })
        .collect()
}

#[cfg(target_os = "linux")]
mod imp {
    pub fn release() -> usize {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut advised = 0;
        for (start, len) in super::read_only_mappings(&maps, &exe.to_string_lossy()) {
            if page_out(start, len) {
                advised += len;
            }
        }
        advised
    }

    #[allow(unsafe_code)] // one system call on a range of this process's own mappings
    fn page_out(start: usize, len: usize) -> bool {
        // SAFETY: the range is a whole read-only, file-backed mapping of this process, read
        // from /proc/self/maps just now; MADV_PAGEOUT only drops its clean pages from memory,
        // and the kernel faults them back in from the file on their next use. No Rust object
        // lives in such a mapping, and no memory's contents change.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) == 0 }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn release() -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/bin/tunnelize";
    const MAPS: &str = "\
5581a0000000-5581a0200000 r--p 00000000 fe:01 123 /usr/bin/tunnelize
5581a0200000-5581a0800000 r-xp 00200000 fe:01 123 /usr/bin/tunnelize
5581a0800000-5581a0900000 r--p 00800000 fe:01 123 /usr/bin/tunnelize
5581a0900000-5581a0910000 rw-p 00900000 fe:01 123 /usr/bin/tunnelize
5581a0910000-5581a0920000 rw-p 00000000 00:00 0
5581a1000000-5581a1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000201000 ---p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn only_the_executables_read_only_mappings_are_released() {
        assert_eq!(
            read_only_mappings(MAPS, EXE),
            [
                (0x5581a0000000, 0x200000),
                (0x5581a0200000, 0x600000),
                (0x5581a0800000, 0x100000),
            ]
        );
    }

    #[test]
    fn a_replaced_executable_and_paths_with_spaces_are_matched_whole() {
        let maps = "\
1000-2000 r-xp 00000000 fe:01 1 /usr/bin/tunnelize (deleted)
3000-4000 r-xp 00000000 fe:01 2 /opt/my apps/tunnelize
";
        assert!(read_only_mappings(maps, EXE).is_empty());
        assert_eq!(
            read_only_mappings(maps, "/opt/my apps/tunnelize"),
            [(0x3000, 0x1000)]
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let maps = "garbage\nzz-1000 r-xp 0 fe:01 1 /usr/bin/tunnelize\n2000-1000 r-xp 0 fe:01 1 /usr/bin/tunnelize\n";
        assert!(read_only_mappings(maps, EXE).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_leaves_the_code_runnable() {
        // Whether the kernel honours the advice depends on its version; either way the code
        // must go on running, and what was advised is a whole number of the mappings.
        let advised = release_startup_code();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let total: usize = read_only_mappings(&maps, &exe.to_string_lossy())
            .iter()
            .map(|(_, len)| len)
            .sum();
        assert!(total > 0, "the test binary has read-only mappings");
        assert!(advised <= total);
    }
}
