//! Backend ACL users that tenants' scripts run as (`upstream.tenant_acl = "scripts"`).
//!
//! Redis checks every key and channel a script touches against the user running it. A tenant's
//! user may reach only `~<prefix>*` and `&<prefix>*`, so whatever a script's code does, the
//! server itself refuses another tenant's keys: defense in depth below keygate's rewriting.
//!
//! A user is either the operator's (`tenants[].backend_user` / `backend_password`, made by the
//! operator on every server) or managed by keygate: `keygate:<tenant>`, with a password derived
//! from the upstream's password, the tenant's name and prefix (every keygate instance of one
//! config derives the same), created with `ACL SETUSER` on a server the first time a connection
//! there cannot authenticate as it. Creating on demand reaches every server keygate connects
//! to: replicas (ACLs are not replicated) and cluster nodes discovered later included.
//!
//! A connection's `Flavor` names its user by id; the credentials are looked up here when the
//! connection is made. Ids are hashes of the credentials and rules, so a changed tenant gets
//! new connections, and entries are never removed (one per tenant configuration ever loaded).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Credentials of a backend user, and how to create it when keygate manages it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BackendUser {
    pub name: String,
    pub password: String,
    /// `ACL SETUSER` arguments after the name, for a user keygate manages.
    pub create: Option<Vec<String>>,
}

impl BackendUser {
    /// The user tenant `name` with key prefix `prefix` runs as: `given` (the operator's), or
    /// one keygate manages.
    pub fn for_tenant(
        name: &str,
        prefix: &str,
        given: Option<&(String, String)>,
        upstream_password: Option<&str>,
    ) -> BackendUser {
        if let Some((user, password)) = given {
            return BackendUser {
                name: user.clone(),
                password: password.clone(),
                create: None,
            };
        }
        let mut seed = Sha256::new();
        seed.update(b"keygate tenant user\0");
        seed.update(upstream_password.unwrap_or_default().as_bytes());
        seed.update(b"\0");
        seed.update(name.as_bytes());
        seed.update(b"\0");
        seed.update(prefix.as_bytes());
        let password: String = seed.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let hashed: String = Sha256::digest(password.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // Keys and channels under the prefix only (glob characters in it escaped; prefixes are
        // validated to hold none, this is belt and braces). Everything else a script could use
        // to see or change other tenants' data without naming a key is taken away: commands
        // over the whole keyspace (KEYS, SCAN, RANDOMKEY, DBSIZE, FLUSHALL...: @dangerous and
        // these), the server's administration, other databases.
        let glob = escape_glob(prefix);
        let create = [
            "reset",
            "on",
            &format!("#{hashed}"),
            &format!("~{glob}*"),
            &format!("&{glob}*"),
            "+@all",
            "-@dangerous",
            "-@admin",
            "-scan",
            "-randomkey",
            "-dbsize",
            "-select",
            "-swapdb",
            "-move",
            "-copy",
            "-client",
            "-function",
            "-script",
            "-pubsub",
        ]
        .map(String::from)
        .to_vec();
        BackendUser {
            name: format!("keygate:{name}"),
            password,
            create: Some(create),
        }
    }

    /// Its id, for a `Flavor` (never 0, which means the upstream's own user).
    fn id(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish().max(1)
    }

    /// `AUTH name password`.
    pub fn auth(&self) -> [Bytes; 3] {
        [
            Bytes::from_static(b"AUTH"),
            Bytes::copy_from_slice(self.name.as_bytes()),
            Bytes::copy_from_slice(self.password.as_bytes()),
        ]
    }

    /// `ACL SETUSER name rules...`, for a user keygate manages.
    pub fn setuser(&self) -> Option<Vec<Bytes>> {
        let rules = self.create.as_ref()?;
        let mut args = vec![
            Bytes::from_static(b"ACL"),
            Bytes::from_static(b"SETUSER"),
            Bytes::copy_from_slice(self.name.as_bytes()),
        ];
        args.extend(rules.iter().map(|r| Bytes::copy_from_slice(r.as_bytes())));
        Some(args)
    }
}

fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn registry() -> &'static RwLock<HashMap<u64, Arc<BackendUser>>> {
    static USERS: OnceLock<RwLock<HashMap<u64, Arc<BackendUser>>>> = OnceLock::new();
    USERS.get_or_init(Default::default)
}

/// Make `user` known to connections; returns the id its `Flavor`s carry.
pub fn register(user: BackendUser) -> u64 {
    let id = user.id();
    let mut users = registry().write().unwrap_or_else(|e| e.into_inner());
    users.entry(id).or_insert_with(|| Arc::new(user));
    id
}

/// The user a flavor's id names (`None` for 0 and unknown ids).
pub fn get(id: u64) -> Option<Arc<BackendUser>> {
    if id == 0 {
        return None;
    }
    let users = registry().read().unwrap_or_else(|e| e.into_inner());
    users.get(&id).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_users_are_confined_to_the_prefix_and_stable() {
        let a = BackendUser::for_tenant("acme", "acme:", None, Some("s3cret"));
        let again = BackendUser::for_tenant("acme", "acme:", None, Some("s3cret"));
        assert_eq!(
            a, again,
            "every keygate of one config derives the same user"
        );
        assert_eq!(a.name, "keygate:acme");
        let rules = a.create.as_ref().unwrap();
        assert!(rules.contains(&"~acme:*".to_string()));
        assert!(rules.contains(&"&acme:*".to_string()));
        assert!(
            !rules.iter().any(|r| r.starts_with('>')),
            "no clear password in rules"
        );
        let other = BackendUser::for_tenant("acme", "acme:", None, Some("other"));
        assert_ne!(a.password, other.password);
        let given = (String::from("app"), String::from("pw"));
        let theirs = BackendUser::for_tenant("acme", "acme:", Some(&given), None);
        assert!(theirs.create.is_none() && theirs.setuser().is_none());
        assert_eq!(escape_glob("a*b?"), "a\\*b\\?");
        let id = register(a);
        assert!(id != 0 && get(id).is_some() && get(0).is_none());
    }
}
