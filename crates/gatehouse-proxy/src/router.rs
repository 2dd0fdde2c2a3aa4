//! Which target a request goes to, from its Host and path.
//!
//! The most specific host wins, then the longest path: routes naming the
//! host exactly, then those matching it by wildcard ("*.example.com", one
//! label; the longest suffix first), then routes for any host; within each,
//! the longest path prefix on whole segments ("/shop" takes "/shop" and
//! "/shop/cart", not "/shopping"). A request matching no route goes to the
//! service's own backends, or is answered 404 when it has none.

use std::collections::HashMap;

use gatehouse_config::Service;

/// Routes by host, each list longest path first: (path, target index).
#[derive(Debug, Default)]
pub(crate) struct Router {
    exact: HashMap<String, Vec<(String, usize)>>,
    /// Keyed by the part after "*.".
    wildcard: HashMap<String, Vec<(String, usize)>>,
    any: Vec<(String, usize)>,
    /// The service's own backends: where unrouted requests go.
    fallback: Option<usize>,
}

impl Router {
    pub(crate) fn new(service: &Service) -> Router {
        let mut router = Router {
            fallback: (!service.backends.is_empty()).then_some(0),
            ..Router::default()
        };
        // Targets list the service's own backends first when there are any.
        let offset = usize::from(!service.backends.is_empty());
        for (i, route) in service.routes.iter().enumerate() {
            let path = route.path.as_ref().map_or("/".to_owned(), |p| p.value.clone());
            let entry = (path, i + offset);
            if route.hosts.is_empty() {
                router.any.push(entry.clone());
            }
            for host in &route.hosts {
                match host.value.strip_prefix("*.") {
                    Some(parent) => router
                        .wildcard
                        .entry(parent.to_owned())
                        .or_default()
                        .push(entry.clone()),
                    None => router
                        .exact
                        .entry(host.value.clone())
                        .or_default()
                        .push(entry.clone()),
                }
            }
        }
        let longest_first =
            |list: &mut Vec<(String, usize)>| list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        router.exact.values_mut().for_each(longest_first);
        router.wildcard.values_mut().for_each(longest_first);
        longest_first(&mut router.any);
        router
    }

    /// Whether requests need their host and path looked at (else every
    /// request is the fallback's).
    pub(crate) fn has_routes(&self) -> bool {
        !(self.any.is_empty() && self.exact.is_empty() && self.wildcard.is_empty())
    }

    /// The target for a request; `host` is lowercase without port (see
    /// [`host_of`]). None: no route and no service backends (404).
    pub(crate) fn pick(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if !self.has_routes() {
            return self.fallback;
        }
        let by_path = |list: &[(String, usize)]| {
            list.iter()
                .find(|(prefix, _)| path_matches(prefix, path))
                .map(|&(_, i)| i)
        };
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|list| by_path(list)) {
                return Some(found);
            }
            if let Some(found) = self.wildcard_lists(host).find_map(by_path) {
                return Some(found);
            }
        }
        by_path(&self.any).or(self.fallback)
    }

    /// Whether some route names this host (exactly or by wildcard): a name
    /// gatehouse serves, for which a connection with the wrong certificate
    /// is told 421 rather than served.
    pub(crate) fn names(&self, host: &str) -> bool {
        self.exact.contains_key(host) || self.wildcard_lists(host).next().is_some()
    }

    /// The wildcard lists matching `host`: only one label may stand for '*'.
    fn wildcard_lists<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a [(String, usize)]> + 'a {
        host.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .map(Vec::as_slice)
            .into_iter()
    }
}

/// `prefix` matches `path` on whole segments.
fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A Host header or :authority as routes match it: no port, no trailing
/// dot, lowercase. None when empty.
pub(crate) fn host_of(authority: &str) -> Option<String> {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        // "[2001:db8::1]:443": keep the brackets' content.
        v6.split_once(']').map_or(v6, |(addr, _)| addr)
    } else {
        authority.rsplit_once(':').map_or(authority, |(host, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                host
            } else {
                authority
            }
        })
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(text: &str) -> Router {
        let farm = gatehouse_config::Farm::parse("t.toml", text).expect("valid config");
        Router::new(&farm.services[0])
    }

    const ROUTES: &str = r#"
[[service]]
name = "sites"
listen = "8080"
mode = "http"
backends = ["127.0.0.1:9000"]
[[service.route]]
host = "www.example.com"
backends = ["127.0.0.1:9001"]
[[service.route]]
host = "app.example.com"
path = "/shop"
backends = ["127.0.0.1:9002"]
[[service.route]]
host = ["*.example.com", "other.test"]
backends = ["127.0.0.1:9003"]
[[service.route]]
path = "/static/"
backends = ["127.0.0.1:9004"]
[[service.route]]
host = "app.example.com"
path = "/shop/admin"
backends = ["127.0.0.1:9005"]
"#;

    #[test]
    fn most_specific_host_then_longest_path() {
        let r = router(ROUTES);
        assert_eq!(r.pick(Some("www.example.com"), "/"), Some(1));
        assert_eq!(
            r.pick(Some("www.example.com"), "/static/x"),
            Some(1),
            "exact host beats any-host path"
        );
        assert_eq!(r.pick(Some("app.example.com"), "/shop"), Some(2));
        assert_eq!(r.pick(Some("app.example.com"), "/shop/cart"), Some(2));
        assert_eq!(
            r.pick(Some("app.example.com"), "/shop/admin/users"),
            Some(5),
            "longest path"
        );
        // No path route of app.example.com matches: the wildcard takes it.
        assert_eq!(r.pick(Some("app.example.com"), "/shopping"), Some(3));
        assert_eq!(r.pick(Some("a.example.com"), "/"), Some(3));
        assert_eq!(
            r.pick(Some("a.b.example.com"), "/"),
            Some(0),
            "a wildcard is one label"
        );
        assert_eq!(r.pick(Some("example.com"), "/"), Some(0));
        assert_eq!(r.pick(Some("other.test"), "/"), Some(3));
        assert_eq!(r.pick(Some("unknown.test"), "/static"), Some(4));
        assert_eq!(r.pick(Some("unknown.test"), "/staticx"), Some(0));
        assert_eq!(r.pick(None, "/"), Some(0));
    }

    #[test]
    fn without_service_backends_unrouted_is_none() {
        let text = ROUTES.replace("backends = [\"127.0.0.1:9000\"]\n", "");
        let r = router(&text);
        assert_eq!(r.pick(Some("www.example.com"), "/"), Some(0));
        assert_eq!(r.pick(Some("unknown.test"), "/"), None);
        assert_eq!(r.pick(None, "/x"), None);
        assert!(r.names("www.example.com"));
        assert!(r.names("x.example.com"));
        assert!(!r.names("unknown.test"));
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            host_of("WWW.Example.com:8443").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(host_of("www.example.com.").as_deref(), Some("www.example.com"));
        assert_eq!(host_of("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(host_of("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of(""), None);
    }

    #[test]
    fn segments() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/shop", "/shop"));
        assert!(path_matches("/shop", "/shop/"));
        assert!(!path_matches("/shop", "/shopping"));
        assert!(!path_matches("/shop", "/"));
    }
}
