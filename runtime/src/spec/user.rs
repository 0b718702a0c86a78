//! Who the process runs as: the security context's user, else the image's `User`, with names
//! resolved in the container's own /etc/passwd and /etc/group (containerd's rules).

use super::input::{SecurityContext, SupplementalGroupsPolicy};
use super::SpecError;

/// uid, primary gid and every supplementary gid (sorted, the primary one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// A user or group as written: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdRef {
    Id(u32),
    Name(String),
}

/// runc (and so containerd) accept ids up to i32::MAX.
const MAX_ID: i64 = i32::MAX as i64;

fn id_from_i64(what: &str, value: i64) -> Result<u32, SpecError> {
    if (0..=MAX_ID).contains(&value) {
        Ok(value as u32)
    } else {
        Err(SpecError::InvalidUser(format!(
            "{what} {value} is out of range 0..={MAX_ID}"
        )))
    }
}

fn id_ref(what: &str, text: &str) -> Result<IdRef, SpecError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let value: i64 = text
            .parse()
            .map_err(|_| SpecError::InvalidUser(format!("{what} {text} is out of range")))?;
        return id_from_i64(what, value).map(IdRef::Id);
    }
    if text.is_empty() {
        return Err(SpecError::InvalidUser(format!("empty {what}")));
    }
    Ok(IdRef::Name(text.to_string()))
}

/// Parses an image `User`: `uid`, `name`, `uid:gid`, `name:group`; empty means root.
fn parse_image_user(user: &str) -> Result<(IdRef, Option<IdRef>), SpecError> {
    if user.is_empty() {
        return Ok((IdRef::Id(0), None));
    }
    let invalid = |why: String| SpecError::InvalidUser(format!("image user {user:?}: {why}"));
    match user.split(':').collect::<Vec<_>>()[..] {
        [u] => Ok((id_ref("user", u).map_err(|e| invalid(e.to_string()))?, None)),
        [u, g] => Ok((
            id_ref("user", u).map_err(|e| invalid(e.to_string()))?,
            Some(id_ref("group", g).map_err(|e| invalid(e.to_string()))?),
        )),
        _ => Err(invalid("expected user or user:group".into())),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Lines of `name:password:uid:gid:...`; comments and malformed lines are skipped, as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0],
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// Lines of `name:password:gid:member,member`.
fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0],
                gid: fields[2].trim().parse().ok()?,
                members,
            })
        })
        .collect()
}

/// Resolves the user, following containerd: `run_as_username`, else `run_as_user`, else the
/// image's `User`. A numeric uid takes its gid from /etc/passwd (0 when not listed); a name must
/// be listed. `run_as_group` replaces the gid; the image's group is used only with the image's
/// user, and without a user it is refused unless the image's user is a uid. Supplementary groups: the primary gid, the groups whose member list names the user
/// (policy Merge), and `supplemental_groups`.
pub fn resolve_user(
    security: &SecurityContext,
    image_user: &str,
    etc_passwd: Option<&str>,
    etc_group: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    let username = security
        .run_as_username
        .as_deref()
        .filter(|n| !n.is_empty());
    let (user, image_group) = match (username, security.run_as_user) {
        (Some(name), _) => (IdRef::Name(name.to_string()), None),
        (None, Some(uid)) => (IdRef::Id(id_from_i64("run_as_user", uid)?), None),
        (None, None) => parse_image_user(image_user)?,
    };
    // containerd refuses run_as_group without a user ("user group is specified without user"),
    // and so does critest; an image user given as a uid is a user, and the group applies to it.
    if security.run_as_group.is_some()
        && username.is_none()
        && security.run_as_user.is_none()
        && !matches!(user, IdRef::Id(_) if !image_user.is_empty())
    {
        return Err(SpecError::GroupWithoutUser);
    }
    let group = match security.run_as_group {
        Some(gid) => Some(IdRef::Id(id_from_i64("run_as_group", gid)?)),
        None => image_group,
    };

    let passwd = parse_passwd(etc_passwd.unwrap_or(""));
    let groups = parse_group(etc_group.unwrap_or(""));

    let (uid, entry) = match &user {
        IdRef::Id(uid) => (*uid, passwd.iter().find(|e| e.uid == *uid)),
        IdRef::Name(name) => match passwd.iter().find(|e| e.name == name) {
            Some(e) => (e.uid, Some(e)),
            None => {
                return Err(SpecError::UnknownUser {
                    name: name.clone(),
                    no_file: etc_passwd.is_none(),
                })
            }
        },
    };
    let gid = match group {
        Some(IdRef::Id(gid)) => gid,
        Some(IdRef::Name(name)) => match groups.iter().find(|g| g.name == name) {
            Some(g) => g.gid,
            None => {
                return Err(SpecError::UnknownGroup {
                    name,
                    no_file: etc_group.is_none(),
                })
            }
        },
        None => entry.map_or(0, |e| e.gid),
    };

    let mut additional_gids = vec![gid];
    if security.supplemental_groups_policy == SupplementalGroupsPolicy::Merge {
        if let Some(name) = entry.map(|e| e.name) {
            // containerd leaves out a group named after the user: that is the primary group.
            additional_gids.extend(
                groups
                    .iter()
                    .filter(|g| g.name != name && g.members.contains(&name))
                    .map(|g| g.gid),
            );
        }
    }
    for &g in &security.supplemental_groups {
        additional_gids.push(id_from_i64("supplemental group", g)?);
    }
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/sbin/nologin
broken line
app:x:1000:1001:App:/home/app:/bin/sh
nobody:x:65534:65534::/:/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
app:x:1001:app
wheel:x:10:root,app
video:x:44: app , other
audio:x:63:other
";

    fn resolve(security: SecurityContext, image_user: &str) -> Result<ResolvedUser, SpecError> {
        resolve_user(&security, image_user, Some(PASSWD), Some(GROUP))
    }

    fn user(uid: u32, gid: u32, additional: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: additional.to_vec(),
        }
    }

    #[test]
    fn image_user_forms_resolve_like_containerd() {
        let cases = [
            ("", user(0, 0, &[0, 10])),
            ("0", user(0, 0, &[0, 10])),
            ("1000", user(1000, 1001, &[10, 44, 1001])),
            ("app", user(1000, 1001, &[10, 44, 1001])),
            ("1000:5", user(1000, 5, &[5, 10, 44])),
            ("app:wheel", user(1000, 10, &[10, 44])),
            ("4242", user(4242, 0, &[0])),
            ("4242:4243", user(4242, 4243, &[4243])),
        ];
        for (image_user, expected) in cases {
            let got = resolve(SecurityContext::default(), image_user).unwrap();
            assert_eq!(got, expected, "image user {image_user:?}");
        }
    }

    #[test]
    fn numeric_uid_missing_from_passwd_gets_gid_zero() {
        let got = resolve_user(&SecurityContext::default(), "123", None, None).unwrap();
        assert_eq!(got, user(123, 0, &[0]));
    }

    #[test]
    fn run_as_username_resolves_uid_and_gid() {
        let security = SecurityContext {
            run_as_username: Some("nobody".into()),
            run_as_user: Some(1),
            ..SecurityContext::default()
        };
        assert_eq!(
            resolve(security, "root").unwrap(),
            user(65534, 65534, &[65534])
        );
    }

    #[test]
    fn run_as_user_overrides_image_user_and_its_group() {
        let security = SecurityContext {
            run_as_user: Some(1000),
            ..SecurityContext::default()
        };
        assert_eq!(
            resolve(security, "root:wheel").unwrap(),
            user(1000, 1001, &[10, 44, 1001])
        );
    }

    #[test]
    fn run_as_group_replaces_the_gid() {
        let security = SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            ..SecurityContext::default()
        };
        assert_eq!(
            resolve(security, "").unwrap(),
            user(1000, 3000, &[10, 44, 3000])
        );
    }

    #[test]
    fn run_as_group_without_a_user_is_refused_unless_the_image_user_is_a_uid() {
        let security = SecurityContext {
            run_as_group: Some(3000),
            ..SecurityContext::default()
        };
        // No user at all (root by default), or one named: containerd's refusal.
        for image_user in ["", "app", "app:wheel"] {
            let e = resolve(security.clone(), image_user).unwrap_err();
            assert!(
                e.to_string()
                    .contains("user group is specified without user"),
                "{image_user:?}: {e}"
            );
        }
        // The image names its user by uid: the group applies to it.
        assert_eq!(
            resolve(security.clone(), "1000").unwrap(),
            user(1000, 3000, &[10, 44, 3000])
        );
        assert_eq!(
            resolve(security, "1000:wheel").unwrap(),
            user(1000, 3000, &[10, 44, 3000])
        );
    }

    #[test]
    fn supplemental_groups_merge_with_etc_group_sorted_without_duplicates() {
        let security = SecurityContext {
            run_as_user: Some(1000),
            supplemental_groups: vec![44, 2000, 5],
            ..SecurityContext::default()
        };
        assert_eq!(
            resolve(security, "").unwrap(),
            user(1000, 1001, &[5, 10, 44, 1001, 2000])
        );
    }

    #[test]
    fn strict_policy_ignores_etc_group_membership() {
        let security = SecurityContext {
            run_as_user: Some(1000),
            supplemental_groups: vec![2000],
            supplemental_groups_policy: SupplementalGroupsPolicy::Strict,
            ..SecurityContext::default()
        };
        assert_eq!(
            resolve(security, "").unwrap(),
            user(1000, 1001, &[1001, 2000])
        );
    }

    #[test]
    fn unknown_user_name_is_an_error_naming_it() {
        let err = resolve(SecurityContext::default(), "ghost").unwrap_err();
        assert!(matches!(&err, SpecError::UnknownUser { name, no_file: false } if name == "ghost"));
        assert!(err.to_string().contains("\"ghost\""), "{err}");
        let err = resolve_user(&SecurityContext::default(), "app", None, None).unwrap_err();
        assert!(err.to_string().contains("no /etc/passwd"), "{err}");
    }

    #[test]
    fn unknown_group_name_is_an_error_naming_it() {
        let err = resolve(SecurityContext::default(), "app:ghosts").unwrap_err();
        assert!(matches!(&err, SpecError::UnknownGroup { name, .. } if name == "ghosts"));
        assert!(err.to_string().contains("\"ghosts\""), "{err}");
    }

    #[test]
    fn malformed_and_out_of_range_users_are_rejected() {
        for image_user in ["a:b:c", ":5", "5:", "99999999999"] {
            let err = resolve(SecurityContext::default(), image_user).unwrap_err();
            assert!(
                matches!(err, SpecError::InvalidUser(_)),
                "{image_user}: {err}"
            );
        }
        for uid in [-1, i64::from(u32::MAX)] {
            let security = SecurityContext {
                run_as_user: Some(uid),
                ..SecurityContext::default()
            };
            assert!(matches!(
                resolve(security, ""),
                Err(SpecError::InvalidUser(_))
            ));
        }
        let security = SecurityContext {
            supplemental_groups: vec![-5],
            ..SecurityContext::default()
        };
        assert!(matches!(
            resolve(security, ""),
            Err(SpecError::InvalidUser(_))
        ));
    }
}
