//! Who is asking: the owner on whose behalf a request runs.
//!
//! The HTTP layer authenticates a request and runs its handler inside [`scope`]; the
//! service stamps new uploads with the current owner and treats every other owner's upload
//! as not found, whatever the protocol (native, tus, IETF). No handler can forget the
//! check, because no handler makes it. Work outside any scope (the sweeper, start-up
//! recovery) acts for the server itself and sees every upload.

use std::future::Future;

tokio::task_local! {
    static PRINCIPAL: Principal;
}

/// The party a request acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No authentication is configured: uploads have no owner.
    Anonymous,
    /// An authenticated owner.
    Owner(String),
}

impl Principal {
    /// The owner to stamp on a new upload.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::Owner(o) => Some(o),
        }
    }
}

/// Runs `f` on behalf of `principal`.
pub async fn scope<F: Future>(principal: Principal, f: F) -> F::Output {
    PRINCIPAL.scope(principal, f).await
}

/// The principal of the request being handled, or `None` for the server's own work.
pub fn current() -> Option<Principal> {
    PRINCIPAL.try_with(Clone::clone).ok()
}

/// Whether the current principal may see an upload owned by `owner`.
pub fn may_see(owner: Option<&str>) -> bool {
    match current() {
        None => true,
        Some(p) => p.owner() == owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owners_see_only_their_own() {
        assert!(may_see(Some("a")), "the server itself sees everything");
        scope(Principal::Owner("a".into()), async {
            assert!(may_see(Some("a")));
            assert!(!may_see(Some("b")));
            assert!(!may_see(None));
        })
        .await;
        scope(Principal::Anonymous, async {
            assert!(may_see(None));
            assert!(!may_see(Some("a")));
        })
        .await;
    }
}
