//! Each member's list pages as the gateway last fetched them: served while fresh (the
//! route's `list_cache_ttl`), so a busy route's `tools/list` does not ask every member
//! every time, and kept as the last good copy for the `grace` period, so a member that
//! stops answering keeps its names for a while and then drops out. A member's
//! `list_changed` forgets its pages. Bounded: the oldest page goes when it is full.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Map, Value};

/// The most pages kept per federated route.
const MAX_PAGES: usize = 4096;

/// One page of one member's list, as the member sent it.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Its items, with the member's own names.
    pub items: Vec<Value>,
    /// The member's cursor for its next page.
    pub next: Option<String>,
    /// The result's other fields (`_meta`, `ttlMs`...).
    pub rest: Map<String, Value>,
}

/// Which page: of which member, list and cursor, and for whom when the member's
/// answers depend on the caller (it gets identity headers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// The member's upstream name.
    pub member: String,
    /// The list method.
    pub method: &'static str,
    /// The member's cursor (`None`: the first page).
    pub cursor: Option<String>,
    /// The caller, for members whose lists depend on it.
    pub caller: Option<(String, String)>,
}

struct Kept {
    page: Arc<Page>,
    at: Instant,
}

/// The pages of one federated route's members.
#[derive(Default)]
pub struct ListCache {
    pages: Mutex<HashMap<PageKey, Kept>>,
}

impl ListCache {
    /// The page, if fetched less than `ttl` ago.
    pub fn fresh(&self, key: &PageKey, ttl: Duration) -> Option<Arc<Page>> {
        let pages = self.pages.lock();
        let kept = pages.get(key)?;
        (kept.at.elapsed() < ttl).then(|| kept.page.clone())
    }

    /// The page as last fetched, if that was less than `grace` ago.
    pub fn last_good(&self, key: &PageKey, grace: Duration) -> Option<Arc<Page>> {
        let pages = self.pages.lock();
        let kept = pages.get(key)?;
        (kept.at.elapsed() < grace).then(|| kept.page.clone())
    }

    /// Keeps a page just fetched.
    pub fn put(&self, key: PageKey, page: Arc<Page>) {
        let mut pages = self.pages.lock();
        if pages.len() >= MAX_PAGES && !pages.contains_key(&key) {
            if let Some(oldest) = pages
                .iter()
                .min_by_key(|(_, k)| k.at)
                .map(|(key, _)| key.clone())
            {
                pages.remove(&oldest);
            }
        }
        pages.insert(
            key,
            Kept {
                page,
                at: Instant::now(),
            },
        );
    }

    /// Forgets every page of `member` (its lists changed).
    pub fn forget(&self, member: &str) {
        self.pages.lock().retain(|k, _| k.member != member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(member: &str, cursor: Option<&str>) -> PageKey {
        PageKey {
            member: member.into(),
            method: "tools/list",
            cursor: cursor.map(Into::into),
            caller: None,
        }
    }

    #[test]
    fn pages_are_fresh_then_last_good_then_gone() {
        let c = ListCache::default();
        c.put(key("a", None), Arc::new(Page::default()));
        assert!(c.fresh(&key("a", None), Duration::from_secs(60)).is_some());
        assert!(
            c.fresh(&key("a", None), Duration::ZERO).is_none(),
            "ttl 0: never fresh"
        );
        assert!(c
            .last_good(&key("a", None), Duration::from_secs(60))
            .is_some());
        assert!(
            c.last_good(&key("a", None), Duration::ZERO).is_none(),
            "past the grace"
        );
        assert!(c
            .fresh(&key("a", Some("2")), Duration::from_secs(60))
            .is_none());
        c.put(key("b", None), Arc::new(Page::default()));
        c.forget("a");
        assert!(c
            .last_good(&key("a", None), Duration::from_secs(60))
            .is_none());
        assert!(c
            .last_good(&key("b", None), Duration::from_secs(60))
            .is_some());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = ListCache::default();
        for i in 0..MAX_PAGES + 10 {
            c.put(key("a", Some(&i.to_string())), Arc::new(Page::default()));
        }
        assert_eq!(c.pages.lock().len(), MAX_PAGES);
    }
}
