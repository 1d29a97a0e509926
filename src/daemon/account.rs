//! The accounts files are read as: which user and group this process runs as (named in an
//! error when it may not read a file), and whether another account (the daemons' `tunnelize`)
//! could read a file, so `check-config` run as root can say so before a unit fails.
//!
//! The account database and the process's credentials are only reachable through libc here
//! (getpwnam, getgrouplist, geteuid, ...): each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The user the packaged units run the daemons as.
pub const DAEMON_USER: &str = "tunnelize";

/// A user and the groups it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// User name (or the number, when it has no name).
    pub user: String,
    /// Primary group name (or number).
    pub group: String,
    uid: u32,
    gids: Vec<u32>,
}

impl Account {
    /// The account this process runs as (effective user and groups).
    pub fn current() -> Account {
        // SAFETY: these calls take no pointers and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut gids = vec![gid];
        // SAFETY: getgroups with a zero count only returns how many groups there are; the
        // second call fills a buffer of exactly that many.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        if n > 0 {
            let mut more = vec![0 as libc::gid_t; n as usize];
            let got = unsafe { libc::getgroups(n, more.as_mut_ptr()) };
            if got > 0 {
                more.truncate(got as usize);
                gids.extend(more);
            }
        }
        Account {
            user: user_name(uid),
            group: group_name(gid),
            uid,
            gids,
        }
    }

    /// The account named `name`, with its groups; `None` when there is no such user.
    pub fn named(name: &str) -> Option<Account> {
        let c_name = CString::new(name).ok()?;
        // SAFETY: getpwnam with a NUL-terminated name; the entry's fields are copied out at
        // once, before any other call that could reuse its static storage.
        let (uid, gid) = unsafe {
            let entry = libc::getpwnam(c_name.as_ptr());
            if entry.is_null() {
                return None;
            }
            ((*entry).pw_uid, (*entry).pw_gid)
        };
        let mut count: libc::c_int = 64;
        let mut gids = vec![0 as libc::gid_t; count as usize];
        // SAFETY: getgrouplist fills at most `count` entries of `gids` and sets `count`; on a
        // short buffer it returns -1 with the count needed, and is called once more.
        let mut filled =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, gids.as_mut_ptr(), &mut count) };
        if filled < 0 && count > 0 {
            gids = vec![0; count as usize];
            filled =
                unsafe { libc::getgrouplist(c_name.as_ptr(), gid, gids.as_mut_ptr(), &mut count) };
        }
        gids.truncate(if filled < 0 { 0 } else { count as usize });
        if !gids.contains(&gid) {
            gids.push(gid);
        }
        Some(Account {
            user: name.to_owned(),
            group: group_name(gid),
            uid,
            gids,
        })
    }

    /// Whether this account may read `path` by its permission bits and every directory on the
    /// way to it may be searched (as the kernel would judge it, ACLs aside; root may read
    /// anything). `None` when a file on the way cannot be examined.
    pub fn may_read(&self, path: &Path) -> Option<bool> {
        if self.uid == 0 {
            return Some(true);
        }
        let path = std::path::absolute(path).ok()?;
        let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
        dirs.reverse();
        for dir in dirs {
            if !self.allowed(&std::fs::metadata(dir).ok()?, 0o1) {
                return Some(false);
            }
        }
        Some(self.allowed(&std::fs::metadata(&path).ok()?, 0o4))
    }

    /// Whether the owner, group or other bits of `meta` that apply to this account grant `bit`
    /// (4 read, 1 search).
    fn allowed(&self, meta: &std::fs::Metadata, bit: u32) -> bool {
        let mode = meta.mode();
        let shift = if meta.uid() == self.uid {
            6
        } else if self.gids.contains(&meta.gid()) {
            3
        } else {
            0
        };
        mode >> shift & bit != 0
    }
}

/// The id of group `name`, if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: getgrnam with a NUL-terminated name; the id is copied out at once, before any
    // other call that could reuse the entry's static storage.
    unsafe {
        let entry = libc::getgrnam(c_name.as_ptr());
        (!entry.is_null()).then(|| (*entry).gr_gid)
    }
}

/// The name of user `uid`, or the number when it has none.
pub fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null; the name is copied out
    // at once.
    unsafe {
        let entry = libc::getpwuid(uid);
        if entry.is_null() || (*entry).pw_name.is_null() {
            return uid.to_string();
        }
        CStr::from_ptr((*entry).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn group_name(gid: u32) -> String {
    // SAFETY: as for `user_name`, with getgrgid.
    unsafe {
        let entry = libc::getgrgid(gid);
        if entry.is_null() || (*entry).gr_name.is_null() {
            return gid.to_string();
        }
        CStr::from_ptr((*entry).gr_name)
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_current_account_has_a_name_and_its_primary_group() {
        let me = Account::current();
        assert!(!me.user.is_empty() && !me.group.is_empty());
        // SAFETY: no pointers.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
    }

    #[test]
    fn a_group_is_found_by_name_and_a_missing_one_is_none() {
        // SAFETY: no pointers.
        let gid = unsafe { libc::getegid() };
        let name = group_name(gid);
        if name != gid.to_string() {
            assert_eq!(group_id(&name), Some(gid), "group {name}");
        }
        assert_eq!(group_id("no-such-group-for-tunnelize-tests"), None);
    }

    #[test]
    fn may_read_follows_the_owner_group_and_other_bits_and_the_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(&file, "x").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        // An account that owns nothing here and is in none of its groups: only "other" bits.
        let stranger = Account {
            user: "stranger".into(),
            group: "strangers".into(),
            uid: meta.uid().wrapping_add(12345),
            gids: vec![meta.gid().wrapping_add(12345)],
        };
        let member = Account {
            gids: vec![meta.gid()],
            ..stranger.clone()
        };
        set(dir.path(), 0o755);
        set(&file, 0o640);
        assert_eq!(stranger.may_read(&file), Some(false));
        assert_eq!(member.may_read(&file), Some(true));
        set(&file, 0o644);
        assert_eq!(stranger.may_read(&file), Some(true));
        // A directory it may not search hides the file, whatever the file's mode.
        set(dir.path(), 0o750);
        assert_eq!(stranger.may_read(&file), Some(false));
        assert_eq!(member.may_read(&file), Some(true));
        set(dir.path(), 0o755);
        assert_eq!(stranger.may_read(&dir.path().join("missing")), None);
    }
}
